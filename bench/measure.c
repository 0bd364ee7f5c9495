/*
 * Runs one program and writes its resource usage to a file:
 *
 *   measure RESULT_FILE PROGRAM [ARG...]
 *
 * RESULT_FILE gets one line: "EXIT USER_SECONDS SYSTEM_SECONDS MAXRSS_KB",
 * where EXIT is the exit status, or 128 + the signal number. The figures
 * come from wait4(2) on the program's process alone.
 *
 * bench/run.py starts contenders through this launcher because on Linux
 * ru_maxrss survives fork and exec: a child forked from the Python driver
 * reports at least the driver's resident size (about 14 MB and more).
 * This launcher is small, so the peak RSS it reports is the program's.
 */
#define _DEFAULT_SOURCE
#include <stdio.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
  struct rusage usage;
  int status, code;
  pid_t pid;
  FILE *out;

  if (argc < 3) {
    fprintf(stderr, "usage: measure RESULT_FILE PROGRAM [ARG...]\n");
    return 2;
  }
  pid = fork();
  if (pid < 0) {
    perror("measure: fork");
    return 2;
  }
  if (pid == 0) {
    execvp(argv[2], argv + 2);
    perror("measure: exec");
    _exit(127);
  }
  if (wait4(pid, &status, 0, &usage) < 0) {
    perror("measure: wait4");
    return 2;
  }
  code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  out = fopen(argv[1], "w");
  if (out == NULL) {
    perror("measure: cannot open the result file");
    return 2;
  }
  fprintf(out, "%d %ld.%06ld %ld.%06ld %ld\n", code, (long)usage.ru_utime.tv_sec,
          (long)usage.ru_utime.tv_usec, (long)usage.ru_stime.tv_sec,
          (long)usage.ru_stime.tv_usec, usage.ru_maxrss);
  fclose(out);
  return code;
}
