from winstar_core.cli import main

main()
