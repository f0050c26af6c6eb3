//! `--chmod` values: octal (`755`) or symbolic (`u+x,go=r`), as chmod(1).

use anyhow::{Result, bail};

/// The mode `spec` gives a file whose current mode is `current`.
/// Symbolic `X` adds execute only for directories or files that are
/// already executable by someone.
pub fn apply_chmod(spec: &str, current: u32, is_dir: bool) -> Result<u32> {
    if spec.bytes().all(|b| b.is_ascii_digit()) {
        return u32::from_str_radix(spec, 8)
            .ok()
            .filter(|m| *m <= 0o7777)
            .ok_or_else(|| anyhow::anyhow!("invalid chmod parameter: '{spec}'"));
    }
    let mut mode = current & 0o7777;
    for clause in spec.split(',') {
        let who_end = clause.find(['+', '-', '=']).unwrap_or(clause.len());
        let (who, mut rest) = clause.split_at(who_end);
        let mut mask = 0;
        for c in who.chars() {
            mask |= match c {
                'u' => 0o4700,
                'g' => 0o2070,
                'o' => 0o1007,
                'a' => 0o7777,
                _ => bail!("invalid chmod parameter: '{spec}'"),
            };
        }
        if who.is_empty() {
            mask = 0o7777;
        }
        while let Some(op) = rest.chars().next() {
            let perms_end = rest[1..]
                .find(['+', '-', '='])
                .map_or(rest.len(), |i| i + 1);
            let perms = &rest[1..perms_end];
            rest = &rest[perms_end..];
            let mut bits = 0;
            for p in perms.chars() {
                bits |= match p {
                    'r' => 0o444,
                    'w' => 0o222,
                    'x' => 0o111,
                    'X' if is_dir || mode & 0o111 != 0 => 0o111,
                    'X' => 0,
                    's' => 0o6000,
                    't' => 0o1000,
                    _ => bail!("invalid chmod parameter: '{spec}'"),
                };
            }
            let bits = bits & mask;
            match op {
                '+' => mode |= bits,
                '-' => mode &= !bits,
                _ => mode = (mode & !mask) | bits,
            }
        }
    }
    Ok(mode)
}

#[cfg(test)]
mod tests {
    use super::apply_chmod;

    #[test]
    fn octal_and_symbolic_modes() {
        assert_eq!(apply_chmod("755", 0o644, false).unwrap(), 0o755);
        assert_eq!(apply_chmod("4755", 0, false).unwrap(), 0o4755);
        assert_eq!(apply_chmod("u+x", 0o644, false).unwrap(), 0o744);
        assert_eq!(apply_chmod("go=r", 0o777, false).unwrap(), 0o744);
        assert_eq!(apply_chmod("a-w,u+w", 0o666, false).unwrap(), 0o644);
        assert_eq!(apply_chmod("+X", 0o644, true).unwrap(), 0o755);
        assert_eq!(apply_chmod("+X", 0o644, false).unwrap(), 0o644);
        assert_eq!(apply_chmod("u+s", 0o755, false).unwrap(), 0o4755);
        assert!(apply_chmod("99999", 0, false).is_err());
    }
}
