//! Resolving a task's `root_image` / `mount_image` sources to host files before the task starts:
//! paths relative to the task directory (or absolute in the task's view), which must stay inside
//! the allocation directory (artifacts, templates; never an arbitrary host file or device), be
//! regular files and be squashfs images. Mounting happens in the task (`supervisor::images`).

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::config::images::Images;
use crate::supervisor::spec::ImageMount;

/// squashfs's superblock magic, "hsqs" on disk (little-endian 0x73717368).
const SQUASHFS_MAGIC: [u8; 4] = *b"hsqs";

/// The images to mount, root first; errors name the option and say what to do.
pub fn resolve(
    images: &Images,
    task_dir: &Path,
    alloc_dir: &Path,
    view: &dyn Fn(&Path) -> Option<PathBuf>,
) -> Result<Vec<ImageMount>, String> {
    let mut out = Vec::new();
    let root = images.root.as_deref().map(|s| ("root_image", s, "/"));
    let mounts = images
        .mounts
        .iter()
        .map(|m| ("mount_image.source", m.source.as_str(), m.target.as_str()));
    for (field, source, target) in root.into_iter().chain(mounts) {
        let host = if source.starts_with('/') {
            view(Path::new(source))
                .ok_or_else(|| format!("{field}: {source:?} is not in the task's filesystem"))?
        } else {
            task_dir.join(source)
        };
        out.push(ImageMount {
            source: check(field, source, &host, alloc_dir)?,
            target: PathBuf::from(target),
        });
    }
    Ok(out)
}

fn check(field: &str, source: &str, host: &Path, alloc_dir: &Path) -> Result<PathBuf, String> {
    let real = host.canonicalize().map_err(|e| {
        format!("{field}: {source:?} ({}) cannot be read: {e}; fetch it with an artifact into local/ first", host.display())
    })?;
    let alloc = alloc_dir
        .canonicalize()
        .map_err(|e| format!("{field}: the allocation directory cannot be read: {e}"))?;
    if !real.starts_with(&alloc) {
        return Err(format!(
            "{field}: {source:?} resolves to {}, outside the allocation directory; images must come from the task's own files (an artifact in local/)",
            real.display()
        ));
    }
    if !real.is_file() {
        return Err(format!("{field}: {source:?} is not a regular file"));
    }
    let mut magic = [0u8; 4];
    std::fs::File::open(&real)
        .and_then(|mut f| f.read_exact(&mut magic))
        .map_err(|e| format!("{field}: reading {source:?}: {e}"))?;
    if magic != SQUASHFS_MAGIC {
        return Err(format!(
            "{field}: {source:?} is not a squashfs image (make one with mksquashfs)"
        ));
    }
    Ok(real)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::images::ImageMount as Wanted;

    #[test]
    fn sources_must_be_squashfs_files_in_the_allocation() {
        let alloc = tempfile::tempdir().expect("tempdir");
        let task_dir = alloc.path().join("web");
        std::fs::create_dir_all(task_dir.join("local")).expect("mkdir");
        std::fs::write(task_dir.join("local/good.sqfs"), b"hsqs....").expect("write");
        std::fs::write(task_dir.join("local/bad.sqfs"), b"PK\x03\x04").expect("write");
        let none = |_: &Path| None;
        let images = Images {
            root: Some("local/good.sqfs".into()),
            mounts: vec![Wanted {
                source: "local/good.sqfs".into(),
                target: "/opt/x".into(),
            }],
        };
        let got = resolve(&images, &task_dir, alloc.path(), &none).expect("resolve");
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].target, PathBuf::from("/"));
        assert_eq!(got[1].target, PathBuf::from("/opt/x"));
        for (root, needle) in [
            ("local/bad.sqfs", "not a squashfs image"),
            ("local/missing.sqfs", "cannot be read"),
            ("local", "not a regular file"),
        ] {
            let images = Images {
                root: Some(root.into()),
                mounts: Vec::new(),
            };
            let err = resolve(&images, &task_dir, alloc.path(), &none).expect_err(root);
            assert!(
                err.starts_with("root_image: ") && err.contains(needle),
                "{err}"
            );
        }
        // An absolute task path maps through the view and must stay in the allocation.
        let outside = |_: &Path| Some(PathBuf::from("/etc/hostname"));
        let images = Images {
            root: Some("/etc/hostname".into()),
            mounts: Vec::new(),
        };
        let err = resolve(&images, &task_dir, alloc.path(), &outside).expect_err("outside");
        assert!(err.contains("outside the allocation directory"), "{err}");
    }
}
