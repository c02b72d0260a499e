"""The shared kernel of data-appraisal, in layers; each imports only the layers below it.

    cli/        the ``data-appraisal`` command line (above the three parties' services)
    client.py   a typed client of the model owner's REST API
    web/        the services' kernel: settings, security, errors → responses, app factory,
                session store and state machine, session supervision, peers, TLS, wire schemas
    runtime/    MPC worker processes: their configuration, the worker, the one supervisor, ``local``
    mpc/        the MPC: CrypTen's compatibility shim, fixed point, the statistics and the
                appraisal kernel, the secure transport, the communicator, the dealer, key streams
    ml/         plaintext maths and data: data sets and their files, the example data, the
                logistic regression, the plaintext twins
    protocol.py the contract: roles, links and their keys, the job, the one result shape
    methods.py  the registry of appraisal methods (direction, public transform, what each needs)
    errors.py   the one error tree, each error with its HTTP status

``experiments/`` is an optional extra on top (the paper's experiments; matplotlib).
"""
