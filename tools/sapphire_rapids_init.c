// /init of the initramfs that tools/run-sapphire-rapids.sh boots under Bochs.
// Mounts /proc, /sys, /dev and /tmp, runs /prog with the NUL-separated
// arguments in /args and environment in /env (PATH=/, HOME=/, TERM=dumb
// first; stdout and stderr on the serial console), prints
// "@@SR-BEGIN@@" before and "@@SR-EXIT <status>@@" after it, then powers the
// emulator off: Bochs' shutdown port 0x8900 first, ACPI power-off as the
// fallback. Built static by the script; not part of the project's build.
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/io.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

static void power_off(void) {
  sync();
  if (ioperm(0x8900, 1, 1) == 0) {
    for (const char *p = "Shutdown"; *p; p++) outb((unsigned char)*p, 0x8900);
  }
  reboot(RB_POWER_OFF);
  for (;;) pause();
}

/* Appends the NUL-separated words of `path` (read into buf) to list after
 * its first `have` entries, at most cap - 1 in all; NULL-terminates the list
 * and returns its length. */
static int read_words(const char *path, char *buf, size_t size, char **list, int have, int cap) {
  int fd = open(path, O_RDONLY);
  if (fd >= 0) {
    ssize_t n = read(fd, buf, size - 1);
    close(fd);
    for (ssize_t i = 0; n > 0 && i < n && have < cap - 1;) {
      list[have++] = buf + i;
      i += strlen(buf + i) + 1;
    }
  }
  list[have] = 0;
  return have;
}

int main(void) {
  mkdir("/proc", 0755); mount("proc", "/proc", "proc", 0, 0);
  mkdir("/sys", 0755); mount("sysfs", "/sys", "sysfs", 0, 0);
  mkdir("/dev", 0755); mount("devtmpfs", "/dev", "devtmpfs", 0, 0);
  mkdir("/tmp", 01777); mount("tmpfs", "/tmp", "tmpfs", 0, 0);
  int fd = open("/dev/console", O_RDWR);
  if (fd >= 0) { dup2(fd, 0); dup2(fd, 1); dup2(fd, 2); if (fd > 2) close(fd); }

  static char buf[1 << 16], ebuf[1 << 16];
  char *argv[1024] = {"/prog"};
  char *envp[256] = {"PATH=/", "HOME=/", "TERM=dumb"};
  read_words("/args", buf, sizeof buf, argv, 1, 1024);
  read_words("/env", ebuf, sizeof ebuf, envp, 3, 256);

  printf("@@SR-BEGIN@@\n");
  fflush(stdout);
  int status = 0, code;
  pid_t pid = fork();
  if (pid == 0) {
    chdir("/");
    execve("/prog", argv, envp);
    fprintf(stderr, "sr-init: exec /prog: %s\n", strerror(errno));
    _exit(127);
  }
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
  code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  printf("\n@@SR-EXIT %d@@\n", code);
  fflush(stdout);
  tcdrain(1);
  power_off();
  return 0;
}
