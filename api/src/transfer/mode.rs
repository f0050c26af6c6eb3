//! fsutil sends Go's `os.FileMode` bits, not the Unix `st_mode`: permissions in the low
//! bits, the file type and setuid/setgid/sticky as flags in the high ones.

const GO_DIR: u32 = 1 << 31;
const GO_SYMLINK: u32 = 1 << 27;
const GO_DEVICE: u32 = 1 << 26;
const GO_NAMED_PIPE: u32 = 1 << 25;
const GO_SOCKET: u32 = 1 << 24;
const GO_SETUID: u32 = 1 << 23;
const GO_SETGID: u32 = 1 << 22;
const GO_CHAR_DEVICE: u32 = 1 << 21;
const GO_STICKY: u32 = 1 << 20;

/// Go's `os.ModeType`: the bits that make an entry anything but a regular file (only
/// regular files carry data in a transfer).
pub(crate) const GO_TYPE_BITS: u32 =
    GO_DIR | GO_SYMLINK | GO_DEVICE | GO_NAMED_PIPE | GO_SOCKET | GO_CHAR_DEVICE | (1 << 19);

const S_IFMT: u32 = 0o170_000;
const S_IFSOCK: u32 = 0o140_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFREG: u32 = 0o100_000;
const S_IFBLK: u32 = 0o060_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFCHR: u32 = 0o020_000;
const S_IFIFO: u32 = 0o010_000;

/// Go's `os.FileMode` for a Unix `st_mode`.
pub fn from_unix_mode(mode: u32) -> u32 {
    let mut go = mode & 0o777;
    go |= match mode & S_IFMT {
        S_IFDIR => GO_DIR,
        S_IFLNK => GO_SYMLINK,
        S_IFBLK => GO_DEVICE,
        S_IFCHR => GO_DEVICE | GO_CHAR_DEVICE,
        S_IFIFO => GO_NAMED_PIPE,
        S_IFSOCK => GO_SOCKET,
        _ => 0,
    };
    for (unix, flag) in [
        (0o4000, GO_SETUID),
        (0o2000, GO_SETGID),
        (0o1000, GO_STICKY),
    ] {
        if mode & unix != 0 {
            go |= flag;
        }
    }
    go
}

/// The Unix `st_mode` for Go's `os.FileMode`.
pub fn to_unix_mode(go: u32) -> u32 {
    let mut mode = go & 0o777;
    mode |= if go & GO_DIR != 0 {
        S_IFDIR
    } else if go & GO_SYMLINK != 0 {
        S_IFLNK
    } else if go & GO_DEVICE != 0 && go & GO_CHAR_DEVICE != 0 {
        S_IFCHR
    } else if go & GO_DEVICE != 0 {
        S_IFBLK
    } else if go & GO_NAMED_PIPE != 0 {
        S_IFIFO
    } else if go & GO_SOCKET != 0 {
        S_IFSOCK
    } else {
        S_IFREG
    };
    for (unix, flag) in [
        (0o4000, GO_SETUID),
        (0o2000, GO_SETGID),
        (0o1000, GO_STICKY),
    ] {
        if go & flag != 0 {
            mode |= unix;
        }
    }
    mode
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_round_trip_as_go_writes_them() {
        // Values as Go prints uint32(os.FileMode): a 0755 directory, a 0777 symlink.
        assert_eq!(from_unix_mode(0o040_755), 0x8000_01ed);
        assert_eq!(from_unix_mode(0o120_777), 0x0800_01ff);
        assert_eq!(from_unix_mode(0o100_644), 0o644);
        for mode in [
            0o040_755, 0o120_777, 0o104_755, 0o020_666, 0o060_660, 0o010_600, 0o041_777,
        ] {
            assert_eq!(to_unix_mode(from_unix_mode(mode)), mode, "{mode:o}");
        }
    }
}
