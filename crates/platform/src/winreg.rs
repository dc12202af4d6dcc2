//! Reading the Windows registry: the subkeys of a key and a key's string values (the guest
//! agent's installed applications come from the Uninstall keys).
#![allow(unsafe_code)] // The registry API is FFI.

use std::io;

use windows_sys::Win32::Foundation::{ERROR_MORE_DATA, ERROR_NO_MORE_ITEMS, ERROR_SUCCESS};
use windows_sys::Win32::System::Registry::{
    HKEY, HKEY_CURRENT_USER, HKEY_LOCAL_MACHINE, KEY_READ, REG_DWORD, REG_VALUE_TYPE,
    RRF_RT_REG_DWORD, RRF_RT_REG_SZ, RegCloseKey, RegEnumKeyExW, RegGetValueW, RegOpenKeyExW,
};

/// The root a path is read under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hive {
    LocalMachine,
    CurrentUser,
}

impl Hive {
    fn raw(self) -> HKEY {
        match self {
            Hive::LocalMachine => HKEY_LOCAL_MACHINE,
            Hive::CurrentUser => HKEY_CURRENT_USER,
        }
    }
}

fn wide(s: &str) -> Vec<u16> {
    s.encode_utf16().chain(std::iter::once(0)).collect()
}

struct Key(HKEY);

impl Drop for Key {
    fn drop(&mut self) {
        // SAFETY: the handle came from RegOpenKeyExW and is closed once, here.
        unsafe { RegCloseKey(self.0) };
    }
}

fn open(hive: Hive, path: &str) -> io::Result<Key> {
    let p = wide(path);
    let mut h: HKEY = std::ptr::null_mut();
    // SAFETY: `p` is NUL-terminated and outlives the call; `h` is a valid out pointer.
    let r = unsafe { RegOpenKeyExW(hive.raw(), p.as_ptr(), 0, KEY_READ, &mut h) };
    if r != ERROR_SUCCESS {
        return Err(io::Error::from_raw_os_error(r as i32));
    }
    Ok(Key(h))
}

/// The names of the subkeys of `path` (an error when `path` cannot be opened).
pub fn subkeys(hive: Hive, path: &str) -> io::Result<Vec<String>> {
    let key = open(hive, path)?;
    let mut out = Vec::new();
    let mut buf = vec![0u16; 256];
    let mut i = 0u32;
    loop {
        let mut len = buf.len() as u32;
        // SAFETY: `buf` holds `len` u16s; the other out pointers may be null.
        let r = unsafe {
            RegEnumKeyExW(
                key.0,
                i,
                buf.as_mut_ptr(),
                &mut len,
                std::ptr::null(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
        match r {
            ERROR_SUCCESS => {
                out.push(String::from_utf16_lossy(&buf[..len as usize]));
                i += 1;
            }
            ERROR_MORE_DATA if buf.len() < 32 * 1024 => buf.resize(buf.len() * 4, 0),
            ERROR_NO_MORE_ITEMS => return Ok(out),
            e => return Err(io::Error::from_raw_os_error(e as i32)),
        }
    }
}

/// The value `name` of the key `path`: a string as is, a DWORD in decimal; `None` when it
/// is absent or of another type.
pub fn string_value(hive: Hive, path: &str, name: &str) -> Option<String> {
    let (p, n) = (wide(path), wide(name));
    let mut buf = vec![0u16; 512];
    loop {
        let mut bytes = (buf.len() * 2) as u32;
        let mut ty: REG_VALUE_TYPE = 0;
        // SAFETY: `p` and `n` are NUL-terminated; `buf` holds `bytes` bytes.
        let r = unsafe {
            RegGetValueW(
                hive.raw(),
                p.as_ptr(),
                n.as_ptr(),
                RRF_RT_REG_SZ | RRF_RT_REG_DWORD,
                &mut ty,
                buf.as_mut_ptr().cast(),
                &mut bytes,
            )
        };
        match r {
            ERROR_SUCCESS => {
                let units = (bytes as usize / 2).min(buf.len());
                let s = &buf[..units];
                if ty == REG_DWORD && units >= 2 {
                    let v = u32::from(s[0]) | (u32::from(s[1]) << 16);
                    return Some(v.to_string());
                }
                let end = s.iter().position(|c| *c == 0).unwrap_or(s.len());
                return Some(String::from_utf16_lossy(&s[..end]));
            }
            ERROR_MORE_DATA if buf.len() < 64 * 1024 => {
                let want = (bytes as usize).div_ceil(2) + 1;
                buf.resize(want.max(buf.len() * 2), 0);
            }
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_key_every_windows_has() {
        let keys = subkeys(Hive::LocalMachine, r"SOFTWARE\Microsoft").unwrap();
        assert!(
            keys.iter().any(|k| k.eq_ignore_ascii_case("Windows")),
            "{keys:?}"
        );
        let v = string_value(
            Hive::LocalMachine,
            r"SOFTWARE\Microsoft\Windows NT\CurrentVersion",
            "CurrentVersion",
        );
        assert!(v.is_some_and(|v| v.contains('.')));
        assert!(subkeys(Hive::LocalMachine, r"SOFTWARE\no such key here").is_err());
    }
}
