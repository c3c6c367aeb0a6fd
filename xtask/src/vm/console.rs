//! The guest's serial console: its lines as text, and what the init (`init.sh`) prints there for
//! the host: the per-boot start and exit markers (`pidvirt-vm:<nonce>:start`,
//! `pidvirt-vm:<nonce>:exit=<N>`), a setup failure, the kernel release.

/// Start of the init's per-boot markers.
pub const MARKER_PREFIX: &str = "pidvirt-vm:";
/// Printed by the init before it powers off because setup failed.
pub const FATAL_PREFIX: &str = "pidvirt-vm: FATAL: ";
/// Printed by the init with `uname -r`.
pub const RELEASE_PREFIX: &str = "pidvirt-vm: kernel release ";

/// A console line as text: lossy UTF-8, without `\r`, `\n` and terminal escape sequences
/// (SeaBIOS clears the screen).
pub fn clean_line(raw: &[u8]) -> String {
    let s = String::from_utf8_lossy(raw);
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' | '\n' => {}
            '\x1b' => {
                // CSI: ESC [ parameters... final byte in '@'..='~'; otherwise ESC + one char.
                if chars.next_if_eq(&'[').is_some() {
                    while chars.next().is_some_and(|c| !('@'..='~').contains(&c)) {}
                } else {
                    chars.next();
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// Whether the boot with `nonce` got as far as starting the command.
pub fn started(console: &str, nonce: &str) -> bool {
    console.contains(&format!("{MARKER_PREFIX}{nonce}:start"))
}

/// Exit code from the last `pidvirt-vm:<nonce>:exit=<N>` marker in `console`.
pub fn exit_status(console: &str, nonce: &str) -> Option<i32> {
    let marker = format!("{MARKER_PREFIX}{nonce}:exit=");
    console.lines().rev().find_map(|line| {
        let rest = &line[line.find(&marker)? + marker.len()..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    })
}

/// Why the guest's setup failed, if its init said so.
pub fn setup_error(console: &str) -> Option<String> {
    console.lines().find_map(|l| l.find(FATAL_PREFIX).map(|i| l[i + FATAL_PREFIX.len()..].to_string()))
}

/// Kernel release the guest reported on its console (`uname -r` in the guest's init), falling
/// back to the kernel's `Linux version` banner.
pub fn kernel_release(console: &str) -> Option<String> {
    let word = |rest: &str| rest.split_whitespace().next().map(str::to_string);
    let after = |prefix: &str| {
        console.lines().find_map(|l| l.find(prefix).and_then(|i| word(&l[i + prefix.len()..])))
    };
    after(RELEASE_PREFIX).or_else(|| after("Linux version "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_marker() {
        let nonce = "00ff";
        let console = "\
boot noise
pidvirt-vm:00ff:start
pidvirt-vm:00ff:exit=99 (fake, printed by the command)
pidvirt-vm:beef:exit=3
hello
[    2.5] some kernel line
pidvirt-vm:00ff:exit=7
[    2.6] reboot: Power down
";
        assert_eq!(exit_status(console, nonce), Some(7));
        assert_eq!(exit_status(console, "beef"), Some(3));
        assert_eq!(exit_status(console, "1234"), None);
        assert_eq!(exit_status("pidvirt-vm:00ff:exit=", nonce), None);
        assert_eq!(exit_status("", nonce), None);
        assert!(started(console, nonce) && !started(console, "beef"));
        let no_newline = "x\npidvirt-vm:ab:start\nline 1\nbpf,lsmpidvirt-vm:ab:exit=0\n";
        assert_eq!(exit_status(no_newline, "ab"), Some(0));
    }

    #[test]
    fn console_lines_are_cleaned() {
        let raw = b"\x1bc\x1b[?7l\x1b[2J\x1b[0mSeaBIOS (version 1.16)\r\n";
        assert_eq!(clean_line(raw), "SeaBIOS (version 1.16)");
        assert_eq!(clean_line(b"a\xffb\r\n"), "a\u{fffd}b");
        assert_eq!(clean_line(b"cut \x1b["), "cut ");
    }

    #[test]
    fn kernel_release_from_console() {
        let c = "[    0.000000] Linux version 6.1.0-56-amd64 (debian-kernel@...) #1 SMP\n\
                 pidvirt-vm: kernel release 6.1.0-56-amd64\n";
        assert_eq!(kernel_release(c).as_deref(), Some("6.1.0-56-amd64"));
        let banner_only = "[    0.000000] Linux version 6.12.117+deb12-amd64 (x) #1\n";
        assert_eq!(kernel_release(banner_only).as_deref(), Some("6.12.117+deb12-amd64"));
        assert_eq!(kernel_release("nothing"), None);
    }

    #[test]
    fn setup_error_is_reported() {
        let c = "a\npidvirt-vm: FATAL: insmod 9p.ko failed\n";
        assert_eq!(setup_error(c).as_deref(), Some("insmod 9p.ko failed"));
        assert_eq!(setup_error("ok"), None);
    }
}
