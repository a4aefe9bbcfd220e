"""Runs after its worker's other test files: the partner secret and the tokens never left the
server, in any response or log line.

The leak oracle in conftest.py checks every test as it ends; this is the final net over
everything this pytest-xdist worker recorded, which also catches any JWT-shaped string in a
log, minted here or not.
"""

import pytest

from conftest import API_SECRET, JWT_SHAPE, LEAKS


@pytest.mark.leak_scan
def test_secret_never_appears_in_any_response_or_log_line():
    assert LEAKS.responses, "the suite recorded no responses: the scan would prove nothing"
    assert LEAKS.log_lines, "the suite recorded no log lines: the scan would prove nothing"
    secret = API_SECRET.encode()
    leaked = [received.where for received in LEAKS.responses if secret in received.blob()]
    assert leaked == []
    assert [line for line in LEAKS.log_lines if API_SECRET in line] == []
    for path in LEAKS.log_files:
        assert secret not in path.read_bytes(), path


@pytest.mark.leak_scan
def test_no_token_appears_in_any_log_line():
    lines = [line for line in LEAKS.log_lines if JWT_SHAPE.search(line.encode())]
    assert lines == []
    for path in LEAKS.log_files:
        assert not JWT_SHAPE.search(path.read_bytes()), path
