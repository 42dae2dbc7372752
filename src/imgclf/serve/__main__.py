from imgclf.serve.main import run

run()
