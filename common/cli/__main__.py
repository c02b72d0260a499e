from common.cli.main import main

main()
