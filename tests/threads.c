/*
 * Many OS threads, each with its own lua_State, load appcenter.core at
 * the same moment and make calls against the local emulator at the same
 * time. Every call must return a credential for the file name it sent.
 *
 * Even-numbered threads authenticate with a token, odd ones with AK/SK,
 * so the signer runs in several threads at once too. The module is
 * loaded through Lua's require, from LUA_CPATH, as a host program would.
 *
 * Usage (from the repository root):
 *   LUA_CPATH='build/lua5.4/?.so;;' threads [THREADS [CALLS]]
 * THREADS defaults to 8 and CALLS (per thread) to 200. The program starts
 * tools/emulator.py on 127.0.0.1 itself and stops it at the end. It
 * prints one line per thread and then "N passed, N failed" over all
 * calls, and exits 1 when a call failed.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#define MAX_THREADS 64
#define MAX_CALLS 100000
#define ERROR_SIZE 512

/* Fake credentials that the emulator is started with. */
#define TOKEN "fake-token-threads-test"
#define PROJECT_ID "0123456789abcdef0123456789abcdef"
#define AK "FAKEAKTHREADS0000001"
#define SK "fake-sk-threads-test-000000000000000000"

/* The emulator stops by itself after this many seconds, so it cannot
 * outlive a program that crashed. */
#define EMULATOR_MAX_SECONDS "600"

/* The calls of one thread, run inside its own Lua state. Returns the
 * number of calls that succeeded and the first error, if any. */
static const char thread_chunk[] =
  "local url, project_id, token, ak, sk, calls, index, use_aksk = ...\n"
  "local core = require('appcenter.core')\n"
  "local opts = { endpoint = url, project_id = project_id,\n"
  "               timeout_ms = 60000 }\n"
  "if use_aksk then opts.ak, opts.sk = ak, sk else opts.token = token end\n"
  "local client, err = core.new(opts)\n"
  "if not client then return 0, tostring(err) end\n"
  "local passed, first_error = 0, nil\n"
  "for call = 1, calls do\n"
  "  local name = ('thread-%d-call-%d.bin'):format(index, call)\n"
  "  local result, meta_or_err = client:create_credential(name)\n"
  "  if result and type(result.credential.secret) == 'string'\n"
  "     and result.object_path:sub(-#name) == name\n"
  "     and meta_or_err.status == 200 then\n"
  "    passed = passed + 1\n"
  "  elseif not first_error then\n"
  "    first_error = result and 'wrong result for ' .. name\n"
  "                  or tostring(meta_or_err)\n"
  "  end\n"
  "end\n"
  "client:close()\n"
  "return passed, first_error\n";

typedef struct worker {
  pthread_t thread;
  int index;
  int calls;
  const char *url;
  pthread_barrier_t *start;
  int passed;
  double seconds;
  char error[ERROR_SIZE];
} worker;


static double now_seconds(void) {
  struct timespec ts;

  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}


static void *run_worker(void *arg) {
  worker *w = arg;
  lua_State *L;
  double started;

  /* All threads create their states and load the module at once. */
  pthread_barrier_wait(w->start);
  started = now_seconds();
  L = luaL_newstate();
  if (L == NULL) {
    snprintf(w->error, sizeof w->error, "luaL_newstate failed");
    return NULL;
  }
  luaL_openlibs(L);
  if (luaL_loadbuffer(L, thread_chunk, sizeof thread_chunk - 1,
                      "=threads") != 0) {
    snprintf(w->error, sizeof w->error, "%s", lua_tostring(L, -1));
    lua_close(L);
    return NULL;
  }
  lua_pushstring(L, w->url);
  lua_pushliteral(L, PROJECT_ID);
  lua_pushliteral(L, TOKEN);
  lua_pushliteral(L, AK);
  lua_pushliteral(L, SK);
  lua_pushinteger(L, w->calls);
  lua_pushinteger(L, w->index);
  lua_pushboolean(L, w->index % 2);
  if (lua_pcall(L, 8, 2, 0) != 0) {
    snprintf(w->error, sizeof w->error, "%s", lua_tostring(L, -1));
  } else {
    w->passed = (int)lua_tointeger(L, -2);
    if (lua_isstring(L, -1))
      snprintf(w->error, sizeof w->error, "%s", lua_tostring(L, -1));
  }
  lua_close(L);
  w->seconds = now_seconds() - started;
  return NULL;
}


/* Starts the emulator and reads its ready line, a JSON object with "url"
 * and "pid". Returns the pipe, or NULL with a message on stderr. */
static FILE *start_emulator(char *url, size_t url_size, pid_t *pid) {
  static const char command[] =
    "exec python3 tools/emulator.py --host 127.0.0.1 --port 0"
    " --max-seconds " EMULATOR_MAX_SECONDS
    " --token " TOKEN " --project-id " PROJECT_ID
    " --ak " AK " --sk " SK;
  char line[1024];
  const char *at;
  FILE *pipe = popen(command, "r");

  if (pipe == NULL) {
    fprintf(stderr, "threads: cannot run python3: %s\n", strerror(errno));
    return NULL;
  }
  if (fgets(line, sizeof line, pipe) == NULL
      || (at = strstr(line, "\"url\": \"")) == NULL
      || sscanf(at + 8, "%255[^\"]", url) != 1
      || strlen(url) + 1 >= url_size
      || (at = strstr(line, "\"pid\": ")) == NULL
      || sscanf(at + 7, "%d", pid) != 1) {
    fprintf(stderr, "threads: the emulator did not start; run "
            "python3 tools/emulator.py from the repository root to see "
            "why\n");
    pclose(pipe);
    return NULL;
  }
  return pipe;
}


static int parse_count(const char *s, int max, const char *name) {
  char *end;
  long v = strtol(s, &end, 10);

  if (*end != '\0' || v < 1 || v > max) {
    fprintf(stderr, "threads: %s must be a whole number from 1 to %d, "
            "got \"%s\"\n", name, max, s);
    exit(2);
  }
  return (int)v;
}


int main(int argc, char **argv) {
  worker workers[MAX_THREADS];
  pthread_barrier_t start;
  char url[256];
  pid_t pid;
  FILE *emulator;
  int threads = 8, calls = 200, i, passed = 0, failed = 0, rc;
  double started;

  if (argc > 1)
    threads = parse_count(argv[1], MAX_THREADS, "THREADS");
  if (argc > 2)
    calls = parse_count(argv[2], MAX_CALLS, "CALLS");

  emulator = start_emulator(url, sizeof url, &pid);
  if (emulator == NULL)
    return 1;

  pthread_barrier_init(&start, NULL, (unsigned)threads + 1);
  memset(workers, 0, sizeof workers);
  for (i = 0; i < threads; i++) {
    workers[i].index = i;
    workers[i].calls = calls;
    workers[i].url = url;
    workers[i].start = &start;
    rc = pthread_create(&workers[i].thread, NULL, run_worker, &workers[i]);
    if (rc != 0) {
      fprintf(stderr, "threads: pthread_create failed: %s\n", strerror(rc));
      return 1;
    }
  }
  pthread_barrier_wait(&start);
  started = now_seconds();
  for (i = 0; i < threads; i++)
    pthread_join(workers[i].thread, NULL);

  for (i = 0; i < threads; i++) {
    worker *w = &workers[i];

    printf("thread %d (%s): %d of %d calls passed in %.2f s%s%s\n", i,
           i % 2 ? "AK/SK" : "token", w->passed, calls, w->seconds,
           w->error[0] ? "; first error: " : "", w->error);
    passed += w->passed;
    failed += calls - w->passed;
  }
  printf("threads: %d threads x %d calls in %.2f s\n", threads, calls,
         now_seconds() - started);
  printf("%d passed, %d failed\n", passed, failed);

  kill(pid, SIGTERM);
  pclose(emulator);
  pthread_barrier_destroy(&start);
  return failed == 0 ? 0 : 1;
}
