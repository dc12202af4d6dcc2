//! Windows known folders, asked of the shell rather than the environment: a service's
//! environment may differ from a console's (Wine gives services another `%ProgramData%`), and
//! the installer and the service must agree on where the instance's files are.

use std::os::windows::ffi::OsStringExt;
use std::path::PathBuf;

use windows_sys::Win32::System::Com::CoTaskMemFree;
use windows_sys::Win32::UI::Shell::{FOLDERID_ProgramData, KF_FLAG_DEFAULT, SHGetKnownFolderPath};

/// `FOLDERID_ProgramData` (usually `C:\ProgramData`), or `None` if the shell does not know it.
pub fn program_data() -> Option<PathBuf> {
    let mut raw: windows_sys::core::PWSTR = std::ptr::null_mut();
    // SAFETY: the GUID is a static; a null token means the current user; `raw` receives a
    // string the shell allocates, which is freed below with CoTaskMemFree whatever the result.
    let hr = unsafe {
        SHGetKnownFolderPath(
            &FOLDERID_ProgramData,
            KF_FLAG_DEFAULT as u32,
            std::ptr::null_mut(),
            &mut raw,
        )
    };
    let path = if hr >= 0 && !raw.is_null() {
        // SAFETY: on success `raw` is a NUL-terminated UTF-16 string; we read up to the NUL.
        let len = (0..).take_while(|&i| unsafe { *raw.add(i) } != 0).count();
        // SAFETY: `len` u16s from `raw` were just read as valid above.
        let wide = unsafe { std::slice::from_raw_parts(raw, len) };
        Some(PathBuf::from(std::ffi::OsString::from_wide(wide)))
    } else {
        None
    };
    // SAFETY: `raw` came from SHGetKnownFolderPath (or is null, which CoTaskMemFree accepts).
    unsafe { CoTaskMemFree(raw as *const _) };
    path
}

#[cfg(test)]
mod tests {
    #[test]
    fn program_data_is_an_absolute_folder() {
        let p = super::program_data().expect("the shell knows FOLDERID_ProgramData");
        assert!(p.is_absolute(), "{}", p.display());
        assert!(p.is_dir(), "{}", p.display());
    }
}
