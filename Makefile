# Shortcuts for tasks.py, which needs only Python 3 (make is optional).
.PHONY: run test fast lint study tables bench format lab setup restore
run test lint tables bench format lab setup restore:
	python3 tasks.py $@
fast:
	python3 tasks.py test --fast
study:
	python3 tasks.py study $(NAME)
