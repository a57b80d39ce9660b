//! Read-only loop devices for filesystem images (loop(4)): a free device from
//! `/dev/loop-control` (`LOOP_CTL_GET_FREE`), bound to the image with `LOOP_CONFIGURE`
//! (Linux 5.8+; `LOOP_SET_FD` + `LOOP_SET_STATUS64` before that), flags read-only and
//! autoclear: the kernel detaches the device once its last user (the mount) is gone, so a task's
//! loop devices are released when its mount namespace ends, however the task ends. Our own
//! ioctls: the loop crates generate their bindings with bindgen (libclang at build time).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

const LOOP_SET_FD: libc::c_ulong = 0x4C00;
const LOOP_CLR_FD: libc::c_ulong = 0x4C01;
const LOOP_SET_STATUS64: libc::c_ulong = 0x4C04;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
const LO_NAME_SIZE: usize = 64;

/// `struct loop_info64` (linux/loop.h).
// Reason: the kernel's field names, kept so the struct reads like the header.
#[allow(clippy::struct_field_names)]
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; LO_NAME_SIZE],
    lo_crypt_name: [u8; LO_NAME_SIZE],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// `struct loop_config` (linux/loop.h).
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

fn info_for(image: &Path) -> LoopInfo64 {
    let mut name = [0u8; LO_NAME_SIZE];
    let bytes = image.as_os_str().as_encoded_bytes();
    let n = bytes.len().min(LO_NAME_SIZE - 1);
    name[..n].copy_from_slice(&bytes[..n]);
    LoopInfo64 {
        lo_device: 0,
        lo_inode: 0,
        lo_rdevice: 0,
        lo_offset: 0,
        lo_sizelimit: 0,
        lo_number: 0,
        lo_encrypt_type: 0,
        lo_encrypt_key_size: 0,
        lo_flags: LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR,
        lo_file_name: name,
        lo_crypt_name: [0; LO_NAME_SIZE],
        lo_encrypt_key: [0; 32],
        lo_init: [0; 2],
    }
}

/// An attached loop device; dropping it closes the device (which, being autoclear, detaches once
/// nothing else holds it).
pub struct Loop {
    pub path: PathBuf,
    _dev: File,
}

/// Binds `image` read-only to a free loop device.
pub fn attach(image: &Path) -> io::Result<Loop> {
    let backing = File::open(image)
        .map_err(|e| io::Error::new(e.kind(), format!("opening {}: {e}", image.display())))?;
    let control = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")
        .map_err(|e| io::Error::new(e.kind(), format!("opening /dev/loop-control: {e}")))?;
    // Another process may take the free device between the two calls: try again a few times.
    let mut last = io::Error::other("no free loop device");
    for _ in 0..16 {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number.
        let n = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE) };
        if n < 0 {
            return Err(io::Error::new(
                io::Error::last_os_error().kind(),
                format!(
                    "no free loop device (LOOP_CTL_GET_FREE): {}",
                    io::Error::last_os_error()
                ),
            ));
        }
        let path = PathBuf::from(format!("/dev/loop{n}"));
        let dev = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("opening {}: {e}", path.display())))?;
        match configure(&dev, &backing, image) {
            Ok(()) => return Ok(Loop { path, _dev: dev }),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => last = e,
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("binding {} to {}: {e}", image.display(), path.display()),
                ));
            }
        }
    }
    Err(last)
}

fn configure(dev: &File, backing: &File, image: &Path) -> io::Result<()> {
    let config = LoopConfig {
        fd: backing.as_raw_fd() as u32,
        block_size: 0,
        info: info_for(image),
        reserved: [0; 8],
    };
    // SAFETY: LOOP_CONFIGURE reads a `struct loop_config` that lives for the call.
    if unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CONFIGURE, &raw const config) } == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if !matches!(err.raw_os_error(), Some(libc::EINVAL | libc::ENOTTY)) {
        return Err(err);
    }
    // Before Linux 5.8: bind, then set the flags.
    // SAFETY: LOOP_SET_FD takes the backing file descriptor as an integer.
    if unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_SET_FD, backing.as_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let info = info_for(image);
    // SAFETY: LOOP_SET_STATUS64 reads a `struct loop_info64` that lives for the call.
    if unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_SET_STATUS64, &raw const info) } != 0 {
        let err = io::Error::last_os_error();
        // SAFETY: LOOP_CLR_FD takes no argument.
        unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CLR_FD) };
        return Err(err);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_structs_have_their_abi_sizes() {
        assert_eq!(std::mem::size_of::<LoopInfo64>(), 232);
        assert_eq!(std::mem::size_of::<LoopConfig>(), 304);
        let info = info_for(Path::new("/a/b.squashfs"));
        assert_eq!(&info.lo_file_name[..13], b"/a/b.squashfs");
        assert_eq!(info.lo_flags, LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR);
    }
}
