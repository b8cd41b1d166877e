from mindedit.utils.allocator import ensure

ensure()  # under jemalloc when installed: re-executes this command once (mindedit.utils.allocator)

from mindedit.cli import main  # noqa: E402

main()
