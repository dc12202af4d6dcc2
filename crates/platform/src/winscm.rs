//! What the `windows-service` crate does not cover of the service control manager: listing
//! every service (EnumServicesStatusExW) and changing only a service's start type
//! (ChangeServiceConfigW with everything else left as it is). The guest agent's
//! `guest.services` / `guest.service` use it beside `windows-service`.
#![allow(unsafe_code)] // The SCM API is FFI.

use std::io;

use windows_sys::Win32::Foundation::{ERROR_MORE_DATA, GetLastError};
use windows_sys::Win32::System::Services::{
    ChangeServiceConfigW, CloseServiceHandle, ENUM_SERVICE_STATUS_PROCESSW, EnumServicesStatusExW,
    OpenSCManagerW, OpenServiceW, SC_ENUM_PROCESS_INFO, SC_HANDLE, SC_MANAGER_CONNECT,
    SC_MANAGER_ENUMERATE_SERVICE, SERVICE_AUTO_START, SERVICE_CHANGE_CONFIG, SERVICE_DEMAND_START,
    SERVICE_DISABLED, SERVICE_NO_CHANGE, SERVICE_STATE_ALL, SERVICE_WIN32,
};

/// One service as the SCM lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceEntry {
    pub name: String,
    pub display_name: String,
    /// SERVICE_STATUS's dwCurrentState: 1 stopped, 2 start pending, 3 stop pending,
    /// 4 running, 5 continue pending, 6 pause pending, 7 paused.
    pub state: u32,
    /// 0 when not running.
    pub pid: u32,
}

struct Handle(SC_HANDLE);

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: the handle came from OpenSCManagerW/OpenServiceW, closed once, here.
        unsafe { CloseServiceHandle(self.0) };
    }
}

fn last_error() -> io::Error {
    // SAFETY: reads the calling thread's last error.
    io::Error::from_raw_os_error(unsafe { GetLastError() } as i32)
}

fn manager(access: u32) -> io::Result<Handle> {
    // SAFETY: null machine and database names mean the local, active database.
    let h = unsafe { OpenSCManagerW(std::ptr::null(), std::ptr::null(), access) };
    if h.is_null() {
        return Err(last_error());
    }
    Ok(Handle(h))
}

/// Reads a NUL-terminated UTF-16 string the SCM wrote into our buffer.
///
/// SAFETY: `p` is null or points to a NUL-terminated string inside the live buffer.
unsafe fn from_wide(p: *const u16) -> String {
    if p.is_null() {
        return String::new();
    }
    let mut n = 0;
    // SAFETY: the string is NUL-terminated (see the function's contract).
    while unsafe { *p.add(n) } != 0 {
        n += 1;
    }
    // SAFETY: `n` units were just read from `p`.
    String::from_utf16_lossy(unsafe { std::slice::from_raw_parts(p, n) })
}

/// Every Win32 service (not drivers), in the SCM's order.
pub fn list_services() -> io::Result<Vec<ServiceEntry>> {
    let scm = manager(SC_MANAGER_CONNECT | SC_MANAGER_ENUMERATE_SERVICE)?;
    let mut out = Vec::new();
    let mut resume = 0u32;
    // u64 elements: the entries hold pointers and must be aligned.
    let mut buf: Vec<u64> = vec![0; 64 * 1024 / 8];
    loop {
        let (mut needed, mut returned) = (0u32, 0u32);
        // SAFETY: `buf` is `buf.len() * 8` writable bytes; the out pointers are valid.
        let ok = unsafe {
            EnumServicesStatusExW(
                scm.0,
                SC_ENUM_PROCESS_INFO,
                SERVICE_WIN32,
                SERVICE_STATE_ALL,
                buf.as_mut_ptr().cast(),
                (buf.len() * 8) as u32,
                &mut needed,
                &mut returned,
                &mut resume,
                std::ptr::null(),
            )
        };
        let more = ok == 0 && {
            let e = last_error();
            if e.raw_os_error() != Some(ERROR_MORE_DATA as i32) {
                return Err(e);
            }
            true
        };
        let entries = buf.as_ptr().cast::<ENUM_SERVICE_STATUS_PROCESSW>();
        for i in 0..returned as usize {
            // SAFETY: the SCM wrote `returned` entries at the start of `buf`; their strings
            // point into `buf`, which is alive and unchanged until the next call.
            let e = unsafe { &*entries.add(i) };
            out.push(ServiceEntry {
                // SAFETY: as above.
                name: unsafe { from_wide(e.lpServiceName) },
                // SAFETY: as above.
                display_name: unsafe { from_wide(e.lpDisplayName) },
                state: e.ServiceStatusProcess.dwCurrentState,
                pid: e.ServiceStatusProcess.dwProcessId,
            });
        }
        if !more {
            return Ok(out);
        }
        if returned == 0 {
            // Not even one entry fit: grow to what the SCM asked for.
            let want = (needed as usize).div_ceil(8) + 1;
            if want > 16 * 1024 * 1024 {
                return Err(io::Error::other("the service list does not fit in 128 MB"));
            }
            buf.resize(want.max(buf.len() * 2), 0);
        }
    }
}

/// Sets the start type of the service `name`: automatic (`Some(true)`), manual
/// (`Some(false)`, started on demand) or disabled (`None`); nothing else changes.
pub fn set_start_type(name: &str, start: Option<bool>) -> io::Result<()> {
    let scm = manager(SC_MANAGER_CONNECT)?;
    let wide: Vec<u16> = name.encode_utf16().chain(std::iter::once(0)).collect();
    // SAFETY: `wide` is NUL-terminated and outlives the call.
    let h = unsafe { OpenServiceW(scm.0, wide.as_ptr(), SERVICE_CHANGE_CONFIG) };
    if h.is_null() {
        return Err(last_error());
    }
    let svc = Handle(h);
    let start_type = match start {
        Some(true) => SERVICE_AUTO_START,
        Some(false) => SERVICE_DEMAND_START,
        None => SERVICE_DISABLED,
    };
    // SAFETY: SERVICE_NO_CHANGE and null pointers leave every other setting as it is.
    let ok = unsafe {
        ChangeServiceConfigW(
            svc.0,
            SERVICE_NO_CHANGE,
            start_type,
            SERVICE_NO_CHANGE,
            std::ptr::null(),
            std::ptr::null(),
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    if ok == 0 {
        return Err(last_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_the_services_of_this_machine() {
        let all = list_services().unwrap();
        assert!(!all.is_empty(), "the SCM listed no service at all");
        assert!(
            all.iter()
                .all(|s| !s.name.is_empty() && (1..=7).contains(&s.state))
        );
    }
}
