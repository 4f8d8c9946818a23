# Shortcuts for tasks.py, which needs only Python 3 (make is optional).
.PHONY: run test bench lab setup
run test bench lab setup:
	python3 tasks.py $@
