//! Keeps a long-lived helper small: once the task runs, the helper only loops in `waitpid`, yet
//! start-up faulted in megabytes of the binary's and libc's code. Clean, never-written text
//! mappings (`r-xp`) can be dropped with `MADV_DONTNEED`: the few pages the wait loop needs fault
//! straight back in from the page cache. Writable or relocated mappings (RELRO shows as `r--p`)
//! are never touched, since dropping them would lose their private contents.

/// Drops the resident pages of every private executable mapping; returns the bytes advised.
pub fn drop_text_pages() -> usize {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return 0;
    };
    let mut advised = 0;
    for (start, end) in text_ranges(&maps) {
        // SAFETY: the range is a whole r-xp private file mapping of this process; its pages are
        // clean (never written), so discarding them only forces a re-read from the file.
        let rc =
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
        if rc == 0 {
            advised += end - start;
        }
    }
    advised
}

/// The `r-xp` file-backed ranges of a `/proc/<pid>/maps` text.
fn text_ranges(maps: &str) -> Vec<(usize, usize)> {
    maps.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let range = f.next()?;
            let perms = f.next()?;
            let path = f.nth(3)?;
            if perms != "r-xp" || !path.starts_with('/') {
                return None;
            }
            let (a, b) = range.split_once('-')?;
            Some((
                usize::from_str_radix(a, 16).ok()?,
                usize::from_str_radix(b, 16).ok()?,
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_only_private_executable_file_mappings() {
        let maps = "55d0-55e0 r--p 00000000 08:01 123 /usr/bin/x\n\
                    55e0-5600 r-xp 00001000 08:01 123 /usr/bin/x\n\
                    7f00-7f10 r-xp 00000000 00:00 0 \n\
                    7f10-7f20 rw-p 00000000 08:01 9 /usr/lib/libc.so.6\n\
                    7f20-7f30 r-xp 00000000 08:01 9 /usr/lib/libc.so.6\n\
                    7ff0-7ff1 r-xp 00000000 00:00 0 [vdso]\n";
        assert_eq!(text_ranges(maps), vec![(0x55e0, 0x5600), (0x7f20, 0x7f30)]);
    }

    #[test]
    fn dropping_text_pages_keeps_the_process_working() {
        assert!(drop_text_pages() > 0);
        // Code still runs (pages fault back in) and data is intact.
        let v: Vec<u64> = (1..=10).collect();
        assert_eq!(v.iter().sum::<u64>(), 55);
        assert_eq!(format!("{}", 42), "42");
    }
}
