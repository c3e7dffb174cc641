"""`make bench` runs `pytest bench`: collect the bench_*.py scripts (pytest alone would only
look at test_*.py) so each one's test_* function runs and prints its figures."""
import pytest


def pytest_collect_file(file_path, parent):
    # a file named on the command line is collected by pytest itself: do not add it twice
    if file_path.suffix == ".py" and file_path.name.startswith("bench_") and not parent.session.isinitpath(file_path):
        return pytest.Module.from_parent(parent, path=file_path)
    return None
