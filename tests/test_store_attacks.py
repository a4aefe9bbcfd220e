"""The revocation store's directory against another local user (issue #22).

A reviewer, as user ``nobody``, beat the old store (a predictable file in /tmp, 0644): (1) a read
lock on its ``-shm`` file left a sign-out unrecorded, (2) files made by nobody before the gateway
started let nobody delete the marks later, (3) a symlink at the default name made the gateway create
root-owned files at its target. Each is repeated here, as nobody, and refused. The suite runs as
root; the attacker is a subprocess dropped to nobody:nogroup with util-linux's ``setpriv``. It needs
a place it can reach, as /tmp was: ``shared`` is a sticky world-writable directory like /tmp
(pytest's own temp directories are 0700: nobody could not even enter them, hiding what is tested).
"""
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import jwt
import pytest

from conftest import ROOT, base_config
from gateway.config import ConfigError
from gateway.identity.hoststate import DB_NAME, STORE_FILES, SqliteState, private_dir
from gateway.shared import StoreUnavailable

SETPRIV = shutil.which("setpriv")
SECRET = "handoff-secret-" + "s" * 32
ISS, AUD = "https://app.partner.example", "zipteams-gateway"
COOKIE = "__Host-zg_session"

pytestmark = [
    pytest.mark.skipif(SETPRIV is None, reason="setpriv not installed (apt-get install util-linux)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="only root can run the attacker as nobody"),
]

# As nobody: open the shared-memory index and hold a read lock on its writer byte (WAL_WRITE_LOCK,
# offset 120) until stdin closes. A read lock needs only read access to the file.
LOCK_SHM = """
import errno, fcntl, os, sys
try:
    fd = os.open(sys.argv[1], os.O_RDONLY)
except OSError as exc:
    print(errno.errorcode[exc.errno], flush=True)
    sys.exit(0)
fcntl.lockf(fd, fcntl.LOCK_SH, 1, 120)
print("locked", flush=True)
sys.stdin.read()
"""


def nobody(code: str, *args: str) -> list[str]:
    return [SETPRIV, "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable, "-I", "-c", code, *args]


def as_nobody(code: str, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run(nobody(code, *args), capture_output=True, text=True, timeout=60, cwd="/")
    assert done.returncode == 0, done.stderr[-2000:]
    return done


NOBODY_UID = pwd.getpwnam("nobody").pw_uid


@pytest.fixture
def shared():
    """A directory every local user can write to, sticky, like /tmp."""
    path = Path(tempfile.mkdtemp(prefix="gateway-shared-"))
    os.chmod(path, 0o1777)
    yield path
    shutil.rmtree(path)


def jwt_app(make_app, state_dir):
    return make_app(GATEWAY_AUTH_MODE="jwt", GATEWAY_HANDOFF_SECRET=SECRET, GATEWAY_HANDOFF_ISSUER=ISS,
                    GATEWAY_HANDOFF_AUDIENCE=AUD, GATEWAY_STATE_DIR=str(state_dir))


def hand_off():
    now = int(time.time())
    return jwt.encode({"iss": ISS, "aud": AUD, "iat": now, "exp": now + 60, "jti": uuid.uuid4().hex,
                       "email": "alice@acme.example"}, SECRET, algorithm="HS256")


def refused(make_app, state_dir, *expected: str) -> str:
    with pytest.raises(ConfigError) as info:
        jwt_app(make_app, state_dir)
    message = str(info.value)
    assert message.startswith("GATEWAY_STATE_DIR: ") and "\n" not in message
    for part in expected:
        assert part in message
    return message


# ------------------------------------------------ (1) a read lock on the -shm file
def test_another_user_cannot_lock_the_shared_memory_file_so_a_sign_out_is_recorded(make_app, shared):
    state = shared / "state"  # reachable by nobody, as the old default in /tmp was; the gateway makes it
    app = jwt_app(make_app, state)
    client = app.test_client()
    assert client.get("/sso/jwt", query_string={"jwt": hand_off()}).status_code == 302
    cookie = client.get_cookie(COOKIE).value
    assert (state / (DB_NAME + "-shm")).exists()
    attack = as_nobody(LOCK_SHM, str(state / (DB_NAME + "-shm")))
    assert attack.stdout.strip() == "EACCES"
    page = client.get("/").get_data(as_text=True)
    csrf = page.split('name="csrf_token" value="')[1].split('"')[0]
    assert client.post("/logout", data={"csrf_token": csrf}).status_code == 303
    replay = app.test_client()
    replay.set_cookie(COOKIE, cookie)
    assert replay.get("/").status_code == 401  # the sign-out was recorded: the copied cookie is dead


def test_the_lock_attack_works_on_a_store_open_to_others_and_start_up_refuses_that_store(shared):
    """The attack above is real: on a store left open to others (the old 0644 files), the same
    lock makes every mark fail, and such a store is what start-up refuses."""
    directory = private_dir(str(shared / "open"))
    store = SqliteState(directory, timeout=0.2)
    assert store.mark("sid:before", 600) is True  # the -wal and -shm files exist now
    os.chmod(directory, 0o755)
    for name in os.listdir(directory):
        os.chmod(os.path.join(directory, name), 0o644)
    attacker = subprocess.Popen(nobody(LOCK_SHM, os.path.join(directory, DB_NAME + "-shm")), cwd="/",
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert attacker.stdout.readline().strip() == "locked"
        with pytest.raises(StoreUnavailable):
            store.mark("sid:signed-out", 600)  # a sign-out that would go unrecorded
    finally:
        attacker.stdin.close()
        attacker.wait(60)
        attacker.stdout.close()
    assert store.mark("sid:signed-out", 600) is True  # the lock released, marks work again
    with pytest.raises(ConfigError, match="is open to group or others"):
        private_dir(directory)


# As nobody: every way at the marks (list, read, write, delete, move the directory away), each one's errno.
TOUCH_STORE = """
import errno, os, sys
state, db, away = sys.argv[1:]
for name, attempt in [("list", lambda: os.listdir(state)), ("read", lambda: open(db, "rb").close()),
                      ("write", lambda: open(db, "r+b").close()), ("delete", lambda: os.unlink(db)),
                      ("move", lambda: os.rename(state, away))]:
    try:
        attempt()
        print(name, "done")
    except OSError as exc:
        print(name, errno.errorcode[exc.errno])
"""


def test_another_user_can_neither_read_change_delete_nor_move_the_marks(make_app, shared):
    state = shared / "state"
    app = jwt_app(make_app, state)
    token = hand_off()
    assert app.test_client().get("/sso/jwt", query_string={"jwt": token}).status_code == 302
    attempts = as_nobody(TOUCH_STORE, str(state), str(state / DB_NAME), str(shared / "moved")).stdout.split("\n")
    assert attempts[:5] == ["list EACCES", "read EACCES", "write EACCES", "delete EACCES",
                            "move EPERM"]  # the sticky bit, as on /tmp
    assert app.test_client().get("/sso/jwt", query_string={"jwt": token}).status_code == 401  # still used


# ------------------------------------------------ (2) files made by another user first
@pytest.mark.parametrize("mode", [0o700, 0o777])
def test_a_directory_another_user_made_first_is_refused_at_start(make_app, shared, mode):
    state = shared / "state"
    as_nobody("import os, sys; os.umask(0); os.mkdir(sys.argv[1], int(sys.argv[2]))", str(state), str(mode))
    refused(make_app, state, str(state), f"is owned by uid {NOBODY_UID}")
    assert os.listdir(state) == []  # nothing written into it


def test_store_files_another_user_made_first_are_refused_at_start(make_app, shared):
    """The old attack: nobody makes the directory and the database, open to all, before the gateway runs."""
    state = shared / "state"
    as_nobody("import os, sys; os.umask(0); os.mkdir(sys.argv[1], 0o777); "
              "open(os.path.join(sys.argv[1], sys.argv[2]), 'w').close()", str(state), DB_NAME)
    refused(make_app, state, "is owned by uid")
    assert os.path.getsize(state / DB_NAME) == 0  # not used


@pytest.mark.parametrize("name", STORE_FILES)
def test_a_store_file_of_another_user_in_the_directory_is_refused_at_start(make_app, tmp_path, name):
    state = Path(private_dir(str(tmp_path / "state")))
    (state / name).touch(mode=0o600)
    os.chown(state / name, NOBODY_UID, -1)
    refused(make_app, state, str(state / name), f"is owned by uid {NOBODY_UID}")


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o755, 0o750, 0o701])
def test_a_directory_open_to_group_or_others_is_refused_at_start(make_app, tmp_path, mode):
    state = tmp_path / "state"
    state.mkdir()
    os.chmod(state, mode)
    refused(make_app, state, f"is open to group or others (mode {mode:04o}; it must be 0700)")


@pytest.mark.parametrize("name", STORE_FILES)
@pytest.mark.parametrize("mode", [0o666, 0o644, 0o640])
def test_a_store_file_open_to_group_or_others_is_refused_at_start(make_app, tmp_path, name, mode):
    state = Path(private_dir(str(tmp_path / "state")))
    (state / name).touch()
    os.chmod(state / name, mode)
    refused(make_app, state, str(state / name), f"(mode {mode:04o}; it must be 0600)")


@pytest.mark.parametrize("mode", [0o777, 0o770])
def test_a_directory_others_could_move_away_is_refused_at_start(make_app, tmp_path, mode):
    """In a parent others may write to without the sticky bit, nobody could rename the gateway's
    directory and put one of its own in place, for the next worker to open."""
    parent = tmp_path / "parent"
    parent.mkdir()
    os.chmod(parent, mode)
    refused(make_app, parent / "state", f"the directory {parent} above {parent / 'state'} lets other users "
            f"replace the directory (mode {mode:04o}, not sticky)")
    assert not (parent / "state").exists()


def test_a_directory_in_another_users_directory_is_refused_at_start(make_app, shared):
    parent = shared / "theirs"
    as_nobody("import os, sys; os.mkdir(sys.argv[1], 0o755)", str(parent))
    refused(make_app, parent / "state", f"is owned by uid {NOBODY_UID}, who could replace the directory")


def test_a_directory_below_another_users_directory_is_refused_at_start_however_deep(make_app, shared):
    """A reviewer's attack: nobody owns a grandparent and swaps the root-owned parent for a tree of
    its own (``mv p p.old; mkdir -m 777 p p/state``), where the next worker's store would be nobody's."""
    grandparent = shared / "theirs"
    as_nobody("import os, sys; os.mkdir(sys.argv[1], 0o755)", str(grandparent))
    parent = grandparent / "p"
    as_nobody("import os, sys; os.chmod(sys.argv[1], 0o777)", str(grandparent))
    parent.mkdir()  # root's, inside nobody's directory
    os.chmod(grandparent, 0o755)  # as nobody would leave it: only nobody may rename p
    refused(make_app, parent / "state", f"the directory {grandparent} above {parent / 'state'} is owned by "
            f"uid {NOBODY_UID}, who could replace the directory")
    assert not (parent / "state").exists()


def test_a_directory_that_is_a_file_or_a_store_file_that_is_a_directory_is_refused_at_start(make_app, tmp_path):
    (tmp_path / "file").touch(mode=0o600)
    refused(make_app, tmp_path / "file", "is not a directory")
    state = Path(private_dir(str(tmp_path / "state")))
    (state / (DB_NAME + "-wal")).mkdir(mode=0o700)
    refused(make_app, state, f"the store file {state / (DB_NAME + '-wal')} is not a regular file")


# ------------------------------------------------ (3) symlinks
@pytest.mark.parametrize("target_exists", [True, False], ids=["to-a-directory", "to-nothing-yet"])
def test_a_symlink_at_the_directory_is_refused_and_nothing_is_made_at_its_target(
        make_app, shared, tmp_path, target_exists):
    target = tmp_path / "victim"
    if target_exists:
        target.mkdir(mode=0o700)
    link = shared / "state"
    as_nobody("import os, sys; os.symlink(sys.argv[1], sys.argv[2])", str(target), str(link))
    refused(make_app, link, f"the directory {link} is a symlink")
    assert (os.listdir(target) == []) if target_exists else not target.exists()


@pytest.mark.parametrize("name", STORE_FILES)
def test_a_symlink_at_a_store_file_is_refused_and_nothing_is_made_at_its_target(make_app, tmp_path, name):
    state = Path(private_dir(str(tmp_path / "state")))
    target = tmp_path / "elsewhere"
    os.symlink(target, state / name)
    refused(make_app, state, f"the store file {state / name} is a symlink")
    assert not target.exists()


def test_a_symlink_put_at_the_database_after_the_check_is_not_followed(tmp_path):
    """Only the gateway's user can write in the checked directory; even so, the database is opened
    without following a symlink."""
    state = private_dir(str(tmp_path / "state"))
    target = tmp_path / "elsewhere"
    os.symlink(target, os.path.join(state, DB_NAME))
    with pytest.raises(ConfigError, match="GATEWAY_STATE_DIR: cannot open the revocation store"):
        SqliteState(state)
    assert not target.exists()


# ------------------------------------------------ start-up, defaults, Redis
def test_the_gateway_refuses_to_start_with_one_line_naming_the_setting(sim, shared, tmp_path):
    link = shared / "state"
    os.symlink(tmp_path / "victim", link)
    env = {k: v for k, v in base_config(sim, GATEWAY_STATE_DIR=str(link)).items() if isinstance(v, str)}
    done = subprocess.run([sys.executable, "-c", "import wsgi"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), **env})
    assert done.returncode == 3
    assert done.stderr.splitlines() == [
        f"gateway: cannot start: GATEWAY_STATE_DIR: the directory {link} is a symlink; the revocation store "
        "needs a directory only the gateway's user can reach (mode 700, files 600): fix it, or remove it and "
        "the gateway makes it"]
    assert not (tmp_path / "victim").exists()


def test_by_default_the_store_is_in_flasks_instance_folder_made_0700(make_app):
    app = make_app(GATEWAY_STATE_DIR="")
    assert app.instance_path == str(ROOT / "instance")
    assert app.extensions["state"].backend.path == str(ROOT / "instance" / DB_NAME)
    assert stat.S_IMODE(os.stat(ROOT / "instance").st_mode) == 0o700


def test_with_redis_the_directory_is_neither_made_nor_checked(make_app, redis_server, shared, tmp_path):
    link = shared / "state"
    os.symlink(tmp_path / "victim", link)
    make_app(GATEWAY_CACHE_URL=redis_server.url, GATEWAY_STATE_DIR=str(link))  # starts: Redis holds the marks
    make_app(GATEWAY_CACHE_URL=redis_server.url, GATEWAY_STATE_DIR=str(tmp_path / "never"))
    assert not (tmp_path / "victim").exists() and not (tmp_path / "never").exists()
