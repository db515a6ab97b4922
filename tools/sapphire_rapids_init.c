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

int main(void) {
  mkdir("/proc", 0755); mount("proc", "/proc", "proc", 0, 0);
  mkdir("/sys", 0755); mount("sysfs", "/sys", "sysfs", 0, 0);
  mkdir("/dev", 0755); mount("devtmpfs", "/dev", "devtmpfs", 0, 0);
  mkdir("/tmp", 01777); mount("tmpfs", "/tmp", "tmpfs", 0, 0);
  int fd = open("/dev/console", O_RDWR);
  if (fd >= 0) { dup2(fd, 0); dup2(fd, 1); dup2(fd, 2); if (fd > 2) close(fd); }

  static char buf[1 << 16];
  char *argv[1024];
  int argc = 0;
  argv[argc++] = "/prog";
  int afd = open("/args", O_RDONLY);
  if (afd >= 0) {
    ssize_t n = read(afd, buf, sizeof buf - 1);
    close(afd);
    for (ssize_t i = 0; n > 0 && i < n && argc < 1023;) {
      argv[argc++] = buf + i;
      i += strlen(buf + i) + 1;
    }
  }
  argv[argc] = 0;
  static char ebuf[1 << 16];
  char *envp[256] = {"PATH=/", "HOME=/", "TERM=dumb"};
  int envc = 3;
  int efd = open("/env", O_RDONLY);
  if (efd >= 0) {
    ssize_t n = read(efd, ebuf, sizeof ebuf - 1);
    close(efd);
    for (ssize_t i = 0; n > 0 && i < n && envc < 255;) {
      envp[envc++] = ebuf + i;
      i += strlen(ebuf + i) + 1;
    }
  }
  envp[envc] = 0;

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
