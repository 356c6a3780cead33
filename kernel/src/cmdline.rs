//! The kernel command line (`-append`): `prezero.KEY=VALUE` words choose the run; other words
//! are ignored.

/// The value of `prezero.<key>=` on `cmdline`, if given.
pub fn get<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline.split_ascii_whitespace().find_map(|w| {
        w.strip_prefix("prezero.")?
            .strip_prefix(key)?
            .strip_prefix('=')
    })
}

/// A number given as `prezero.<key>=N`, or `default`; a malformed one is an error naming it.
pub fn number(cmdline: &str, key: &'static str, default: u64) -> Result<u64, &'static str> {
    match get(cmdline, key) {
        None => Ok(default),
        Some(v) => v.parse().map_err(|_| key),
    }
}

/// A flag given as `prezero.<key>=1` (or `=on`, `=yes`, `=true`).
pub fn flag(cmdline: &str, key: &str) -> bool {
    matches!(get(cmdline, key), Some("1" | "on" | "yes" | "true"))
}
