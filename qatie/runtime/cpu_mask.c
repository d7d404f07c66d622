/* Run a process as if its x86-64 CPU had no AVX-512 and no VNNI (AVX2 is the best it has), at
 * native speed: the kernels every library picks from CPUID (ONNX Runtime's MLAS, XNNPACK, numpy)
 * are then the ones an AVX2-only CPU (AMD Zen 1-3, Intel Skylake client) runs.
 *
 *   LD_PRELOAD=/path/cpu_mask.so python ...        (built by qatie.runtime.cpu_mask)
 *
 * How: Linux's CPUID faulting (ARCH_SET_CPUID, CPU flag "cpuid_fault") makes every CPUID
 * instruction of this process (and its threads and forks) raise SIGSEGV; the handler executes
 * the real CPUID with faulting briefly off, clears the feature bits below and resumes after the
 * instruction. Any other SIGSEGV goes to the handler the program installed (sigaction/signal are
 * wrapped so that ours stays first), or kills the process as usual. glibc's own string functions
 * chose their variants before this runs and keep them (they are not what is measured).
 * QATIE_CPU_MASK_OFF=1 loads it without masking (a control). Linux x86-64 only. */
#define _GNU_SOURCE
#include <asm/prctl.h>
#include <cpuid.h>
#include <dlfcn.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#ifndef ARCH_SET_CPUID
#define ARCH_SET_CPUID 0x1012
#endif

static struct sigaction program_handler; /* what the program asked for SIGSEGV */
static int active;

static int (*real_sigaction)(int, const struct sigaction *, struct sigaction *);

static void mask_features(unsigned leaf, unsigned sub, unsigned r[4]) {
    if (leaf == 7 && sub == 0) {
        /* EBX: AVX512F 16, DQ 17, IFMA 21, PF 26, ER 27, CD 28, BW 30, VL 31 */
        r[1] &= ~((1u << 16) | (1u << 17) | (1u << 21) | (1u << 26) | (1u << 27) | (1u << 28) |
                  (1u << 30) | (1u << 31));
        /* ECX: VBMI 1, VBMI2 6, AVX512_VNNI 11, BITALG 12, VPOPCNTDQ 14 */
        r[2] &= ~((1u << 1) | (1u << 6) | (1u << 11) | (1u << 12) | (1u << 14));
        /* EDX: 4VNNIW 2, 4FMAPS 3, VP2INTERSECT 8, AMX-BF16 22, AVX512_FP16 23, AMX-TILE 24, AMX-INT8 25 */
        r[3] &= ~((1u << 2) | (1u << 3) | (1u << 8) | (1u << 22) | (1u << 23) | (1u << 24) | (1u << 25));
    } else if (leaf == 7 && sub == 1) {
        /* EAX: AVX-VNNI 4, AVX512_BF16 5; EDX: AVX-VNNI-INT8 4, AVX10 19 */
        r[0] &= ~((1u << 4) | (1u << 5));
        r[3] &= ~((1u << 4) | (1u << 19));
    } else if (leaf == 0x24) { /* AVX10 converged vector ISA leaf: none */
        r[0] = r[1] = r[2] = r[3] = 0;
    }
}

static void on_segv(int sig, siginfo_t *info, void *ctx) {
    ucontext_t *uc = (ucontext_t *)ctx;
    const unsigned char *ip = (const unsigned char *)uc->uc_mcontext.gregs[REG_RIP];
    if (info->si_code == SI_KERNEL && ip[0] == 0x0f && ip[1] == 0xa2) { /* CPUID */
        unsigned leaf = (unsigned)uc->uc_mcontext.gregs[REG_RAX];
        unsigned sub = (unsigned)uc->uc_mcontext.gregs[REG_RCX];
        unsigned r[4];
        syscall(SYS_arch_prctl, ARCH_SET_CPUID, 1);
        __cpuid_count(leaf, sub, r[0], r[1], r[2], r[3]);
        syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0);
        mask_features(leaf, sub, r);
        uc->uc_mcontext.gregs[REG_RAX] = r[0];
        uc->uc_mcontext.gregs[REG_RBX] = r[1];
        uc->uc_mcontext.gregs[REG_RCX] = r[2];
        uc->uc_mcontext.gregs[REG_RDX] = r[3];
        uc->uc_mcontext.gregs[REG_RIP] += 2;
        return;
    }
    /* A real fault: the program's handler, or the default action (the instruction faults again). */
    if (program_handler.sa_flags & SA_SIGINFO) {
        if (program_handler.sa_sigaction) {
            program_handler.sa_sigaction(sig, info, ctx);
            return;
        }
    } else if (program_handler.sa_handler != SIG_DFL && program_handler.sa_handler != SIG_IGN) {
        program_handler.sa_handler(sig);
        return;
    }
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    real_sigaction(SIGSEGV, &dfl, NULL);
}

int sigaction(int sig, const struct sigaction *act, struct sigaction *old) {
    if (!real_sigaction)
        real_sigaction = dlsym(RTLD_NEXT, "sigaction");
    if (!active || sig != SIGSEGV)
        return real_sigaction(sig, act, old);
    if (old)
        *old = program_handler;
    if (act)
        program_handler = *act;
    return 0;
}

sighandler_t signal(int sig, sighandler_t handler) {
    struct sigaction act, old;
    memset(&act, 0, sizeof act);
    act.sa_handler = handler;
    sigemptyset(&act.sa_mask);
    act.sa_flags = SA_RESTART;
    if (sigaction(sig, &act, &old) != 0)
        return SIG_ERR;
    return old.sa_handler;
}

__attribute__((constructor)) static void start(void) {
    real_sigaction = dlsym(RTLD_NEXT, "sigaction");
    const char *off = getenv("QATIE_CPU_MASK_OFF");
    if (off && *off == '1')
        return;
    struct sigaction act;
    memset(&act, 0, sizeof act);
    act.sa_sigaction = on_segv;
    act.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&act.sa_mask);
    if (real_sigaction(SIGSEGV, &act, &program_handler) != 0)
        return;
    if (syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0) != 0) { /* no CPUID faulting here: unmasked */
        real_sigaction(SIGSEGV, &program_handler, NULL);
        return;
    }
    active = 1;
}
