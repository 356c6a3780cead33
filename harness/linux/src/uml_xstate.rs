//! User-Mode Linux 6.x on hosts with a large XSAVE area (AVX-512, AMX): the workaround.
//!
//! UML keeps a guest process's FPU state in a fixed buffer sized for x87, SSE and AVX (the
//! 832-byte XSAVE layout) and moves it with `ptrace(PTRACE_GETREGSET / PTRACE_SETREGSET,
//! NT_X86_XSTATE)`. The host refuses an xstate write whose size is not its own full XSAVE size
//! (`EFAULT`, `xstateregs_set`), so on a host with a larger area UML panics at the first switch
//! to guest user space: `userspace - ptrace set fp regs failed, errno = 14`, then
//! `Attempted to kill init`. Seen on this project's CI machine on 2026-11-30 (host kernel 6.18,
//! a CPU with AMX: CPUID reports an 11,008-byte XSAVE area); the earlier machine had a plain
//! AVX2 host and ran UML as is.
//!
//! The workaround, applied only on such hosts ([`needed`]):
//! 1. a seccomp filter on the UML process makes `ptrace(PTRACE_GETREGSET, pid,
//!    NT_X86_XSTATE, ..)` fail with `EIO`. UML probes that call once at start-up; finding no
//!    xstate support it moves FPU state with `PTRACE_GETFPREGS` / `PTRACE_SETFPREGS` (the
//!    512-byte FXSAVE layout), which every x86-64 host accepts. Nothing else is filtered, and
//!    guest system calls never reach the filter (UML intercepts them with `PTRACE_SYSEMU`,
//!    which the host handles before seccomp).
//! 2. FXSAVE carries x87 and SSE state only, so AVX and AVX-512 registers of guest processes
//!    are not preserved across UML's context switches: static glibc's AVX-512 `memcpy`
//!    corrupted the TLS image and `init` died in `__ctype_init`. The guest's glibc is therefore
//!    told to use its SSE2 string functions (`GLIBC_TUNABLES`, passed on the kernel command
//!    line: UML hands unknown `KEY=VALUE` arguments to init's environment). Our own guest
//!    programs are built for the x86-64 baseline, without AVX.
//!
//! A UML kernel that sizes its xstate buffer from the host needs none of it: Debian's 7.2.7
//! (`UmlKernelChoice::Linux7`) boots and runs the guest workload on the same AMX host without
//! it (measured 2026-11-30), so [`needed`] applies it to 6.x kernels only. This module goes
//! away when the harness drops 6.x.

use std::os::unix::process::CommandExt;
use std::process::Command;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::setup::UmlKernel;

/// The XSAVE area UML 6.1 can move through `NT_X86_XSTATE`: legacy 512 + header 64 + AVX 256.
pub const UML_XSTATE_BYTES: u32 = 832;

/// `ptrace` request `PTRACE_GETREGSET`.
const PTRACE_GETREGSET: u64 = 0x4204;
/// ELF note type of the x86 extended state (`NT_X86_XSTATE`).
const NT_X86_XSTATE: u64 = 0x202;

/// Guest glibc without AVX string functions (see the module doc).
pub const GLIBC_TUNABLES_ARG: &str =
    "GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX512F,-AVX512VL,-AVX512BW,-AVX512DQ,-AVX512CD,-AVX2,-AVX";

/// The size of this host's XSAVE area for the features the host kernel enabled (CPUID leaf
/// 0xD, sub-leaf 0, EBX), or `None` without XSAVE.
pub fn host_xstate_bytes() -> Option<u32> {
    #[cfg(target_arch = "x86_64")]
    {
        // Leaf 0xD is only meaningful when leaf 1 says the OS enabled XSAVE (OSXSAVE, ECX
        // bit 27).
        let leaf1 = std::arch::x86_64::__cpuid(1);
        if leaf1.ecx & (1 << 27) == 0 {
            return None;
        }
        let xsave = std::arch::x86_64::__cpuid_count(0xd, 0);
        Some(xsave.ebx)
    }
    #[cfg(not(target_arch = "x86_64"))]
    None
}

/// Whether `kernel` needs the workaround on this host: a 6.x kernel (the fixed 832-byte buffer)
/// on a host whose XSAVE area is larger than that.
pub fn needed(kernel: &UmlKernel) -> bool {
    kernel.version().0 < 7 && host_xstate_bytes().is_some_and(|bytes| bytes > UML_XSTATE_BYTES)
}

/// The seccomp program of step 1: `ptrace(PTRACE_GETREGSET, _, NT_X86_XSTATE, _)` fails with
/// `EIO`; every other system call is allowed.
pub fn filter() -> Result<BpfProgram, seccompiler::Error> {
    let rule = SeccompRule::new(vec![
        SeccompCondition::new(
            0,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Eq,
            PTRACE_GETREGSET,
        )?,
        SeccompCondition::new(2, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, NT_X86_XSTATE)?,
    ])?;
    let filter = SeccompFilter::new(
        [(libc::SYS_ptrace, vec![rule])].into_iter().collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EIO as u32),
        TargetArch::x86_64,
    )?;
    Ok(filter.try_into()?)
}

/// Applies the workaround to a UML command line: installs the filter in the child between
/// fork and exec, and adds the glibc tunables argument to `args`.
pub fn apply(cmd: &mut Command) -> Result<(), seccompiler::Error> {
    let program = filter()?;
    // SAFETY: the closure runs in the forked child before exec; it only makes the prctl and
    // seccomp system calls on a program built before the fork (no allocation, no locks).
    unsafe {
        cmd.pre_exec(move || {
            seccompiler::apply_filter(&program).map_err(|e| std::io::Error::other(e.to_string()))
        });
    }
    cmd.arg(GLIBC_TUNABLES_ARG);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_builds_for_this_arch() {
        let program = filter().expect("a valid seccomp program");
        assert!(!program.is_empty());
    }

    #[test]
    fn the_host_size_is_read() {
        // Every x86-64 host this runs on has XSAVE; the size at least covers the legacy area.
        if let Some(bytes) = host_xstate_bytes() {
            assert!(bytes >= 576, "{bytes}");
        }
    }

    // The filter really makes the xstate read fail and leaves other ptrace requests alone: a
    // child installs it, then traces a grandchild.
    #[test]
    fn filtered_child_sees_the_xstate_read_fail_and_fpregs_work() {
        let program = filter().unwrap();
        // SAFETY: fork in a test process; the child only makes system calls and exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let code = unsafe { child_checks(&program) };
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status), "status {status:#x}");
        assert_eq!(
            libc::WEXITSTATUS(status),
            0,
            "see child_checks for the code"
        );
    }

    /// Returns 0 when the xstate read fails with EIO and GETFPREGS works; a code otherwise.
    unsafe fn child_checks(program: &BpfProgram) -> i32 {
        if seccompiler::apply_filter(program).is_err() {
            return 10;
        }
        let tracee = libc::fork();
        if tracee == 0 {
            libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0);
            libc::raise(libc::SIGSTOP);
            libc::_exit(0);
        }
        let mut status = 0;
        libc::waitpid(tracee, &mut status, 0);
        let mut buf = [0u8; 4096];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let r = libc::ptrace(
            libc::PTRACE_GETREGSET,
            tracee,
            NT_X86_XSTATE as usize,
            &mut iov as *mut libc::iovec,
        );
        let errno = *libc::__errno_location();
        let mut fp: libc::user_fpregs_struct = std::mem::zeroed();
        let fpr = libc::ptrace(libc::PTRACE_GETFPREGS, tracee, 0, &mut fp as *mut _);
        libc::kill(tracee, libc::SIGKILL);
        libc::waitpid(tracee, &mut status, 0);
        match (r, errno, fpr) {
            (-1, libc::EIO, 0) => 0,
            (-1, _, _) => 11,
            (_, _, 0) => 12,
            _ => 13,
        }
    }
}
