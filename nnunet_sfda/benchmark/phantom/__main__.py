from nnunet_sfda.benchmark.phantom.cli import main

main()
