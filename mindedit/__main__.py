from mindedit.cli import main

main()
