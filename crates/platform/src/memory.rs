//! Giving back the memory that only start-up needed: the pages of the daemon's own code and
//! read-only data that parsing the config, validating it and starting every subsystem touched.

/// Asks the kernel to reclaim this process's pages of its own executable's read-only mappings
/// (code, read-only data: clean pages backed by the file, never anything written). What the
/// idle daemon runs afterwards is faulted back in, from the page cache or the file, the first
/// time it runs; the rest stays out until a reload needs it. This is what the kernel would do
/// anyway to an idle process under memory pressure, done at the moment we know start-up is
/// over. Returns the bytes of mappings advised. Linux (5.4+, `MADV_PAGEOUT`) only; elsewhere
/// nothing is done.
pub fn page_out_own_code() -> Result<u64, String> {
    imp::page_out_own_code()
}

#[cfg(target_os = "linux")]
mod imp {
    pub fn page_out_own_code() -> Result<u64, String> {
        let exe = std::fs::read_link("/proc/self/exe")
            .map_err(|e| format!("cannot read /proc/self/exe: {e}"))?;
        let exe = exe.to_string_lossy();
        let maps = std::fs::read_to_string("/proc/self/maps")
            .map_err(|e| format!("cannot read /proc/self/maps: {e}"))?;
        let mut total = 0u64;
        for line in maps.lines() {
            // `start-end perms offset dev inode path`
            let mut f = line.split_whitespace();
            let (Some(range), Some(perms)) = (f.next(), f.next()) else {
                continue;
            };
            if perms.contains('w') || !line.ends_with(exe.as_ref()) {
                continue;
            }
            let Some((a, b)) = range.split_once('-') else {
                continue;
            };
            let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
            else {
                continue;
            };
            if b <= a {
                continue;
            }
            // SAFETY: the range is one whole mapping of this process, read from
            // /proc/self/maps, and not writable: MADV_PAGEOUT only drops pages that the file
            // holds unchanged; their contents stay the same and are faulted back in on the
            // next access, so no memory the program relies on changes.
            let r = unsafe { libc::madvise(a as *mut libc::c_void, b - a, libc::MADV_PAGEOUT) };
            if r != 0 {
                return Err(format!(
                    "madvise(MADV_PAGEOUT) on the executable's mapping {range}: {}",
                    std::io::Error::last_os_error()
                ));
            }
            total += (b - a) as u64;
        }
        Ok(total)
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    pub fn page_out_own_code() -> Result<u64, String> {
        Ok(0)
    }
}
