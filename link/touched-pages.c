// Records which pages of a program's code run: preloaded (LD_PRELOAD) into a process, it makes
// the program's executable mapping inaccessible, and on each first touch of a page marks the
// page in a file and makes it executable again. With every function aligned to a page, the
// marked pages name the functions that ran. `link/generate` uses it; nothing ships it.
//
// TOUCHED_PAGES_DIR=<folder> turns it on: the process writes <folder>/<program>.<pid>, one
// byte per page of its code mapping (which starts at the page of the code segment's address),
// 1 where the page ran.
#define _GNU_SOURCE
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static unsigned long code_start, code_end;
static unsigned char *touched;

static void on_fault(int signal_number, siginfo_t *info, void *context) {
    (void)context;
    unsigned long address = (unsigned long)info->si_addr;
    if (address < code_start || address >= code_end) {
        // A real fault: let it kill the process as it would have.
        struct sigaction fallback = {0};
        fallback.sa_handler = SIG_DFL;
        sigaction(signal_number, &fallback, NULL);
        return;
    }
    unsigned long page = (address - code_start) >> 12;
    touched[page] = 1;
    mprotect((void *)(code_start + (page << 12)), 4096, PROT_READ | PROT_EXEC);
}

__attribute__((constructor)) static void start_tracing(void) {
    const char *folder = getenv("TOUCHED_PAGES_DIR");
    if (folder == NULL) {
        return;
    }
    char program[PATH_MAX];
    ssize_t length = readlink("/proc/self/exe", program, sizeof program - 1);
    if (length < 0) {
        return;
    }
    program[length] = 0;
    FILE *maps = fopen("/proc/self/maps", "r");
    if (maps == NULL) {
        return;
    }
    char line[PATH_MAX + 128];
    while (fgets(line, sizeof line, maps) != NULL) {
        unsigned long start, end;
        char permissions[8];
        char path[PATH_MAX] = "";
        int fields = sscanf(line, "%lx-%lx %7s %*s %*s %*s %4095s", &start, &end, permissions, path);
        if (fields == 4 && strcmp(path, program) == 0 && permissions[2] == 'x') {
            code_start = start;
            code_end = end;
        }
    }
    fclose(maps);
    if (code_start == 0) {
        return;
    }
    const char *name = strrchr(program, '/') + 1;
    char file[PATH_MAX];
    snprintf(file, sizeof file, "%s/%s.%d", folder, name, (int)getpid());
    unsigned long pages = (code_end - code_start) >> 12;
    int descriptor = open(file, O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (descriptor < 0 || ftruncate(descriptor, (off_t)pages) != 0) {
        return;
    }
    touched = mmap(NULL, pages, PROT_READ | PROT_WRITE, MAP_SHARED, descriptor, 0);
    close(descriptor);
    if (touched == MAP_FAILED) {
        return;
    }
    struct sigaction action = {0};
    action.sa_sigaction = on_fault;
    action.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigaction(SIGSEGV, &action, NULL);
    mprotect((void *)code_start, code_end - code_start, PROT_NONE);
}
