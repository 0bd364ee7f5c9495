"""The contenders, their environment, and the setup they need: builds and packages."""

import json
import os
import shutil

from benchlib import BUILD, ROOT
from benchlib.fixtures import (ACCESS_KEY, API_PATH, FILE_NAME, PROJECT_ID, SECRET_KEY,
                               fake_token)
from benchlib.processes import run_quiet

NODE_SDK_PACKAGE = "@huaweicloud/huaweicloud-sdk-core"
NODE_SDK_VERSION = "3.1.211"
# Outside the repository, so that node_modules never lands in a commit.
NODE_SDK_DIR = os.environ.get("BENCH_NODE_DIR", "/tmp/bench-node")

LUA_PATH = "bench/?.lua;lua/?.lua;lua/?/init.lua;;"

# The peers of the main comparison, in table order.
PEERS = ("luacurl-luajit", "luasocket", "luasocket-keepalive", "node-sdk")


class Contender:
    """One client program. argv(endpoint, requests, ca_file) returns its command line."""

    def __init__(self, name, description, argv, lua=None):
        self.name = name
        self.description = description
        self.argv = argv
        self.lua = lua            # "lua5.4" or "luajit": selects build/<lua>/ in LUA_CPATH
        self.env = None           # set by set_environment
        self.skip_reason = None


def lua_script(interpreter, script, mode=None, full_url=False):
    """Return an argv function for a Lua contender script under bench/.

    The argv function takes the endpoint; with full_url the script gets
    the request URL instead.
    """
    def argv(url, requests, ca_file):
        if full_url:
            url += API_PATH
        words = [interpreter, "bench/" + script, url, str(requests), FILE_NAME, ca_file or "-"]
        return words + ([mode] if mode else [])
    return argv


def make_contenders(floor_path):
    """Return the contenders of the main comparison, in table order."""
    def floor_argv(url, requests, ca_file):
        return [floor_path, url + API_PATH, str(requests), FILE_NAME] + ([ca_file] if ca_file else [])

    def node_argv(url, requests, ca_file):
        return ["node", "bench/node_client.js", url + API_PATH, str(requests), FILE_NAME, ca_file or "-"]

    return [
        Contender("floor", "C, plain libcurl, one easy handle, JSON unparsed", floor_argv),
        Contender("core-token", "appcenter.core, token, Lua 5.4",
                  lua_script("lua5.4", "appcenter_client.lua", "core-token"), "lua5.4"),
        Contender("core-aksk", "appcenter.core, AK/SK signing, Lua 5.4",
                  lua_script("lua5.4", "appcenter_client.lua", "core-aksk"), "lua5.4"),
        Contender("wrapper", "appcenter wrapper, retries on, token, Lua 5.4",
                  lua_script("lua5.4", "appcenter_client.lua", "wrapper"), "lua5.4"),
        Contender("core-token-luajit", "appcenter.core, token, LuaJIT",
                  lua_script("luajit", "appcenter_client.lua", "core-token"), "luajit"),
        Contender("luacurl-luajit", "Debian lua-curl (luacurl 0.3.0) and lua-cjson, LuaJIT",
                  lua_script("luajit", "luacurl_client.lua", full_url=True), "luajit"),
        Contender("luasocket", "socket.http as it is (a new connection per request) and lua-cjson, Lua 5.4",
                  lua_script("lua5.4", "luasocket_client.lua", "close", full_url=True), "lua5.4"),
        Contender("luasocket-keepalive", "socket.http on one persistent socket and lua-cjson, Lua 5.4",
                  lua_script("lua5.4", "luasocket_client.lua", "keepalive", full_url=True), "lua5.4"),
        Contender("node-sdk", "Node.js, %s AKSKSigner, keep-alive agent" % NODE_SDK_PACKAGE, node_argv),
    ]


def oneshot_contender():
    """Return the contender that calls core.create_credential, so a new connection, per request."""
    return Contender("core-oneshot", "core.create_credential per request: no reuse",
                     lua_script("lua5.4", "appcenter_client.lua", "core-oneshot"), "lua5.4")


def set_environment(contender, token_bytes):
    env = dict(os.environ)
    for name in ("LUA_PATH_5_4", "LUA_CPATH_5_4", "LUA_INIT", "LUA_INIT_5_4"):
        env.pop(name, None)
    env["LUA_PATH"] = LUA_PATH
    env["LUA_CPATH"] = "build/%s/?.so;;" % (contender.lua or "lua5.4")
    env["APPCENTER_TOKEN"] = fake_token(token_bytes)
    env["APPCENTER_AK"] = ACCESS_KEY
    env["APPCENTER_SK"] = SECRET_KEY
    env["APPCENTER_PROJECT_ID"] = PROJECT_ID
    env["NODE_SDK_DIR"] = NODE_SDK_DIR
    contender.env = env


def debian_package_installed(name):
    status, output = run_quiet(["dpkg-query", "-W", "-f=${Status}", name], timeout=30)
    return status == 0 and output.strip() == "install ok installed"


def ensure_debian_packages(names):
    """Install missing Debian packages when root. Return None, or why they are missing."""
    missing = [name for name in names if not debian_package_installed(name)]
    if not missing:
        return None
    if os.geteuid() != 0:
        return "Debian package(s) %s not installed; run: sudo apt-get install %s" % (
            ", ".join(missing), " ".join(missing))
    print("installing Debian packages: %s" % " ".join(missing), flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends"] + missing
    status, output = run_quiet(install, env=env)
    if status != 0:
        # The package lists may be missing or stale on a new machine.
        run_quiet(["apt-get", "update", "-qq"], env=env)
        status, output = run_quiet(install, env=env)
    if status != 0:
        return "apt-get install %s failed: %s" % (" ".join(missing), output.strip()[-300:])
    return None


def build_programs():
    """Compile bench/floor.c and bench/measure.c into build/bench/ and return the floor's path."""
    os.makedirs(BUILD, exist_ok=True)
    compiler = os.environ.get("CC", "cc")
    curl_flags = run_quiet(["pkg-config", "--cflags", "--libs", "libcurl"])[1].split() or ["-lcurl"]
    for name, libraries in (("floor", curl_flags), ("measure", [])):
        source = os.path.join(ROOT, "bench", name + ".c")
        status, output = run_quiet([compiler, "-O2", "-g", "-std=c99", "-Wall", "-Wextra",
                                    "-o", os.path.join(BUILD, name), source] + libraries)
        if status != 0:
            raise RuntimeError("building bench/%s.c failed:\n%s" % (name, output))
    return os.path.join(BUILD, "floor")


def ensure_node_sdk():
    """Install the pinned SDK into NODE_SDK_DIR. Return None, or why it is missing."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        return "node or npm not found"
    if node_sdk_version() == NODE_SDK_VERSION:
        return None
    print("installing %s@%s into %s" % (NODE_SDK_PACKAGE, NODE_SDK_VERSION, NODE_SDK_DIR), flush=True)
    os.makedirs(NODE_SDK_DIR, exist_ok=True)
    status, output = run_quiet(["npm", "install", "--prefix", NODE_SDK_DIR, "--no-audit", "--no-fund",
                                "--loglevel=error", "%s@%s" % (NODE_SDK_PACKAGE, NODE_SDK_VERSION)])
    if status != 0:
        return "npm install %s@%s failed: %s" % (NODE_SDK_PACKAGE, NODE_SDK_VERSION, output.strip()[-300:])
    return None


def node_sdk_version():
    """Return the version of the SDK installed in NODE_SDK_DIR, or None."""
    manifest = os.path.join(NODE_SDK_DIR, "node_modules", NODE_SDK_PACKAGE, "package.json")
    try:
        with open(manifest) as f:
            return json.load(f).get("version")
    except (OSError, ValueError):
        return None


# Lua modules each contender loads besides this repository's.
REQUIRED_LUA_MODULES = {
    "luacurl-luajit": ["curl", "cjson"],
    "luasocket": ["socket.http", "cjson"],
    "luasocket-keepalive": ["socket.http", "cjson"],
}


def check_requirements(contenders):
    """Install what the peers need and set skip_reason on each contender that cannot run."""
    module_built = {lua: os.path.exists(os.path.join(ROOT, "build", lua, "appcenter", "core.so"))
                    for lua in ("lua5.4", "luajit")}
    names = {c.name for c in contenders}
    lua_curl_reason = None
    if "luacurl-luajit" in names and shutil.which("luajit"):
        # Debian builds lua-curl for Lua 5.1 and 5.2 only, so it runs under LuaJIT.
        lua_curl_reason = ensure_debian_packages(["lua-curl"])
    node_reason = ensure_node_sdk() if "node-sdk" in names else None
    for c in contenders:
        if c.lua and shutil.which(c.lua) is None:
            c.skip_reason = "%s not found" % c.lua
        elif c.name.startswith(("core", "wrapper")) and not module_built[c.lua]:
            c.skip_reason = "build/%s/appcenter/core.so missing: run make" % c.lua
        elif c.name == "luacurl-luajit" and lua_curl_reason:
            c.skip_reason = lua_curl_reason
        elif c.name == "node-sdk" and node_reason:
            c.skip_reason = node_reason
        if c.skip_reason is None and c.lua:
            modules = REQUIRED_LUA_MODULES.get(c.name, ["cjson"])
            code = ";".join('require("%s")' % m for m in modules)
            status, output = run_quiet([c.lua, "-e", code], env=c.env, cwd=ROOT, timeout=30)
            if status != 0:
                c.skip_reason = "%s cannot load %s: %s" % (
                    c.lua, ", ".join(modules), " ".join(output.strip().splitlines()[-1:]))
