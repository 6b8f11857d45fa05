from fedctl.cli.app import main

main()
