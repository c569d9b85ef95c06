"""Sandbox prelude: installs the audit hook, then runs the user's script or module.

Runs in the child interpreter (`python -I -S -B -c <this text>`) before the user's code.
argv: [-c, sandbox_dir, guard "0"/"1", *python_args]. Everything lives inside `_install()`
so no reference to the hook or its state stays reachable afterwards. Stdlib only.
"""

import os
import runpy
import sys


def _install() -> None:
    import posixpath

    box = posixpath.realpath(sys.argv[1])
    stdlib = posixpath.dirname(posixpath.realpath(os.__file__))
    roots = tuple(sorted({posixpath.realpath(p) for p in sys.path if p} | {stdlib}))
    devices = ("/dev/null", "/dev/urandom", "/dev/random", "/dev/zero")
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    deny_always = frozenset({
        "socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo", "socket.gethostbyname",
        "socket.gethostbyaddr", "socket.sendto", "socket.sendmsg", "os.fork", "os.forkpty", "os.exec",
        "os.posix_spawn", "os.spawn", "os.system", "os.startfile", "subprocess.Popen", "pty.spawn", "os.killpg",
        "signal.pthread_kill", "os.symlink", "os.link", "ctypes.dlopen", "ctypes.dlsym", "ctypes.call_function",
        "gc.get_referrers", "gc.get_referents", "gc.get_objects", "sys.remote_exec", "os.chroot", "os.setuid",
        "webbrowser.open", "urllib.Request", "ftplib.connect", "smtplib.connect",
        "http.client.connect", "imaplib.open", "poplib.connect", "telnetlib.Telnet.open", "shutil.chown"})
    deny_modules = frozenset({"ctypes", "_ctypes", "_posixsubprocess", "_xxsubinterpreters", "_xxinterpchannels",
                              "_testcapi", "_testinternalcapi", "_testmultiphase"})
    mutating = frozenset({"os.remove", "os.rmdir", "os.rename", "os.mkdir", "os.chmod", "os.chown", "os.truncate",
                          "os.utime", "os.chflags", "os.lchflags", "os.mkfifo", "os.mknod", "os.setxattr",
                          "os.removexattr", "shutil.rmtree", "shutil.copyfile", "shutil.copytree", "shutil.move"})
    listing = frozenset({"os.listdir", "os.scandir", "os.chdir", "glob.glob", "glob.glob/2", "os.listxattr",
                         "os.getxattr"})
    two_paths = ("os.rename", "shutil.copyfile", "shutil.copytree", "shutil.move")
    realpath, isabs, join, getcwd, getpid = posixpath.realpath, posixpath.isabs, posixpath.join, os.getcwd, os.getpid
    Denied = PermissionError

    def resolve(p: object) -> str:
        if type(p) is bytes:
            p = os.fsdecode(p)
        if type(p) is not str:
            raise Denied("sandbox: only plain str/bytes paths are allowed")
        return realpath(p if isabs(p) else join(getcwd(), p))

    def inside(p: str, bases: tuple[str, ...]) -> bool:
        return any(p == b or p.startswith(b + "/") for b in bases)

    def check(event: str, args: tuple[object, ...]) -> None:
        if event in deny_always:
            raise Denied(f"sandbox: {event} is not allowed")
        if event == "import":
            if str(args[0]).partition(".")[0] in deny_modules:
                raise Denied(f"sandbox: importing {args[0]} is not allowed")
            return
        if event == "open":
            path, mode, flags = args
            if type(path) is int:
                return
            p = resolve(path)
            if type(flags) is int:
                write = bool(flags & write_flags)
            else:
                write = any(c in str(mode or "") for c in "wax+")
            if inside(p, (box,)) or (p in devices):
                return
            if not write and inside(p, roots):
                return
            raise Denied(f"sandbox: {'writing' if write else 'reading'} {p} is outside the sandbox")
        if event in mutating or event in listing:
            paths = [a for a in args[:2] if type(a) in (str, bytes)] if event in two_paths else [args[0]]
            if event in listing and args and args[0] is None:
                return
            for a in paths:
                if type(a) is int:
                    raise Denied(f"sandbox: {event} on a file descriptor is not allowed")
                p = resolve(a)
                ok = inside(p, (box,)) or (event in listing and event != "os.chdir" and inside(p, roots))
                if not ok:
                    raise Denied(f"sandbox: {event} on {p} is outside the sandbox")
            return
        if event == "os.kill":
            if args[0] != getpid():
                raise Denied("sandbox: signalling other processes is not allowed")
            return

    if sys.argv[2] == "1":
        sys.addaudithook(check)
    sys.path.insert(0, box)
    os.chdir(box)


if __name__ == "__main__":
    _install()
    del _install
    _args = sys.argv[3:]
    if _args[:1] == ["-m"]:
        sys.argv = [_args[1]] + _args[2:]
        del _args
        runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
    else:
        sys.argv = list(_args)
        del _args
        runpy.run_path(sys.argv[0], run_name="__main__")
