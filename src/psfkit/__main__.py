from psfkit.cli import main

main()
