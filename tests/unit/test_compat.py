"""The CrypTen compatibility shim (import on torch 2.x, exact decoding), and the gloo deadline the
recorder attack's naive CrypTen wiring needs."""

from __future__ import annotations

import datetime
import sys

import pytest
import torch
import torch.distributed as dist

from common.mpc.compat import exact_decode, import_crypten
from tests.integration.attack_party import rendezvous_timeout


def test_import_crypten_on_torch_2() -> None:
    crypten = import_crypten()
    assert hasattr(crypten, "cryptensor")
    assert "torch.onnx._internal.registration" in sys.modules


def test_onnx_is_a_stand_in_that_explains_itself() -> None:
    import_crypten()
    onnx = sys.modules["onnx"]
    assert not hasattr(onnx, "__file__")  # never the real package: it costs seconds per worker
    with pytest.raises(ImportError, match="ONNX model converter is not available"):
        onnx.load  # noqa: B018


def test_the_config_reads_what_omegaconf_holds_through_writes_and_overrides() -> None:
    """The fast reads of ``crypten.cfg`` answer what its OmegaConf config holds: after a write
    through a section, inside and after ``temp_override``, for dotted keys and nested sections;
    a missing key is still OmegaConf's error."""
    crypten = import_crypten()
    cfg = crypten.cfg
    saved = cfg.config
    try:
        assert cfg.encoder.precision_bits == cfg.config.encoder.precision_bits == 16
        assert cfg["functions.max_method"] == cfg.config.functions.max_method
        assert cfg.nn.dpsmpc.protocol == cfg.config.nn.dpsmpc.protocol
        cfg.mpc.provider = "TTP"
        assert cfg.mpc.provider == cfg.config.mpc.provider == "TTP"
        with cfg.temp_override({"functions.exp_iterations": 3, "mpc.provider": "TFP"}):
            assert (cfg.functions.exp_iterations, cfg.mpc.provider) == (3, "TFP")
        assert (cfg.functions.exp_iterations, cfg.mpc.provider) == (8, "TTP")
        cfg.debug.validation_mode = True
        assert cfg.config.debug.validation_mode is True and cfg.debug.validation_mode is True
        with pytest.raises(AttributeError, match="nothing"):
            cfg.debug.nothing  # noqa: B018
    finally:
        cfg.config = saved
        cfg.mpc.provider = "TFP"
        cfg.debug.validation_mode = False
    assert cfg.debug.validation_mode is False


def test_decode_fixes_negative_values_off_by_one() -> None:
    crypten = import_crypten()
    encoder = crypten.encoder.FixedPointEncoder()
    values = torch.tensor(
        [-100.9999, -102.0, -0.25, -1e-5, 0.0, 3.5, 1234.5678], dtype=torch.float64
    )
    decoded = encoder.decode(encoder.encode(values)).double()
    # upstream decodes -100.9999 as -102.0 (floor division by scale - 1)
    assert torch.allclose(decoded, values, atol=2**-16, rtol=1e-6)


def test_exact_decode_is_exact_in_float64() -> None:
    scale = 2**16
    ints = torch.tensor([-(2**40) - 1, -scale - 1, -1, 0, 1, 2**40 + 12345], dtype=torch.long)
    expected = torch.tensor([float(i) / scale for i in ints.tolist()], dtype=torch.float64)
    assert torch.equal(exact_decode(ints, scale), expected)


def test_rendezvous_timeout_injects_and_restores(monkeypatch) -> None:
    seen = {}

    def fake_init(*args, **kwargs):
        seen["init"] = kwargs.get("timeout")

    def fake_group(*args, **kwargs):
        seen["group"] = kwargs.get("timeout")

    monkeypatch.setattr(dist, "init_process_group", fake_init)
    monkeypatch.setattr(dist, "new_group", fake_group)
    with rendezvous_timeout(7):
        dist.init_process_group(backend="gloo")
        dist.new_group([0])
    assert seen == {"init": datetime.timedelta(seconds=7), "group": datetime.timedelta(seconds=7)}
    assert dist.init_process_group is fake_init and dist.new_group is fake_group


def test_tensors_made_from_shares_draw_nothing_and_keep_their_shares() -> None:
    """from_shares, clone and shallow_copy start from an empty shell: no zero-sharing is drawn
    (the generators would fail here, with no communicator), and each keeps CrypTen's meaning."""
    crypten = import_crypten()
    MPCTensor = crypten.mpc.MPCTensor
    share = torch.tensor([3, -5, 1 << 40])
    x = MPCTensor.from_shares(share, precision=0)
    assert x.share is share and x._tensor.encoder.scale == 1
    assert not x.requires_grad and x.ptype == crypten.mpc.arithmetic
    copy, shallow = x.clone(), x.shallow_copy()
    assert torch.equal(copy.share, share) and copy.share is not share
    assert shallow._tensor is x._tensor and shallow.ptype == x.ptype
    bits = MPCTensor.from_shares(share, ptype=crypten.mpc.binary)
    assert bits.ptype == crypten.mpc.binary and bits.share is share
