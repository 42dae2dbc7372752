from imgclf.cli.main import run

run()
