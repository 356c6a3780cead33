//! Kernel module trees (`lib/modules/<version>`): finding a module file, its dependencies and
//! loading it (decompressed) for the initramfs.
//!
//! An unpacked `.deb` (Debian's cloud kernel fetched by `apt-get download`) carries no
//! `modules.dep` (depmod runs at install time), so dependencies are read from each module's own
//! `.modinfo` `depends=` field; modules listed in `modules.builtin` are part of the kernel image
//! and need no file. Compressed modules (`.ko.xz`, `.ko.zst`, `.ko.gz`) are decompressed with
//! the host's `xz`, `zstd` or `gzip`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::elf;
use crate::error::{io_err, Error, Result};

/// A kernel module ready to be put into an initramfs.
#[derive(Debug, Clone)]
pub struct Module {
    /// Canonical name (`-` replaced by `_`), e.g. `virtio_balloon`.
    pub name: String,
    /// Where it came from.
    pub source: PathBuf,
    /// The uncompressed `.ko` bytes.
    pub data: Vec<u8>,
    /// Names of the modules it depends on (`.modinfo` `depends=`).
    pub depends: Vec<String>,
}

/// A `lib/modules/<version>` directory.
#[derive(Debug, Clone)]
pub struct ModuleTree {
    root: PathBuf,
    builtin: BTreeSet<String>,
    files: BTreeMap<String, PathBuf>,
}

/// `virtio-pci` and `virtio_pci` name the same module.
pub fn canonical_name(name: &str) -> String {
    name.replace('-', "_")
}

fn module_name_of(file: &str) -> Option<&str> {
    [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .find_map(|ext| file.strip_suffix(ext))
}

impl ModuleTree {
    /// Indexes the module files under `root` (`.../lib/modules/<version>`).
    pub fn open(root: &Path) -> Result<ModuleTree> {
        if !root.is_dir() {
            return Err(Error::Missing {
                what: format!("kernel module directory {}", root.display()),
                fix: "run scripts/linux-setup.sh (add --peer for the QEMU cloud kernel)".into(),
            });
        }
        let builtin = fs::read_to_string(root.join("modules.builtin"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                l.rsplit('/')
                    .next()
                    .and_then(module_name_of)
                    .map(canonical_name)
            })
            .collect();
        let mut files = BTreeMap::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            let rd = fs::read_dir(&dir).map_err(io_err(format!("listing {}", dir.display())))?;
            for entry in rd.flatten() {
                let path = entry.path();
                let ft = entry
                    .file_type()
                    .map_err(io_err(format!("stat {}", path.display())))?;
                if ft.is_dir() {
                    stack.push(path);
                } else if let Some(name) = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(module_name_of)
                {
                    files.entry(canonical_name(name)).or_insert(path);
                }
            }
        }
        Ok(ModuleTree {
            root: root.to_path_buf(),
            builtin,
            files,
        })
    }

    /// The tree's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether `name` is built into the kernel image (listed in `modules.builtin`).
    pub fn is_builtin(&self, name: &str) -> bool {
        self.builtin.contains(&canonical_name(name))
    }

    /// The file of module `name`, if the tree has one.
    pub fn path(&self, name: &str) -> Option<&Path> {
        self.files.get(&canonical_name(name)).map(PathBuf::as_path)
    }

    /// Loads module `name` (decompressing it if needed) and reads its dependencies.
    pub fn load(&self, name: &str) -> Result<Module> {
        let name = canonical_name(name);
        let path = self.path(&name).ok_or_else(|| Error::Missing {
            what: format!("kernel module {name} under {}", self.root.display()),
            fix: "check the kernel package (is the module built in? see modules.builtin)".into(),
        })?;
        let data = read_module_file(path)?;
        let depends = depends_of(&data)
            .map_err(|e| Error::invalid(format!("module {}", path.display()), e.to_string()))?;
        Ok(Module {
            name,
            source: path.to_path_buf(),
            data,
            depends,
        })
    }

    /// `names` and everything they depend on, dependencies first (the order to `insmod` them).
    /// Built-in modules are skipped.
    pub fn resolve(&self, names: &[&str]) -> Result<Vec<Module>> {
        let mut out: Vec<Module> = Vec::new();
        let mut done = BTreeSet::new();
        for name in names {
            self.visit(&canonical_name(name), &mut done, &mut Vec::new(), &mut out)?;
        }
        Ok(out)
    }

    fn visit(
        &self,
        name: &str,
        done: &mut BTreeSet<String>,
        path: &mut Vec<String>,
        out: &mut Vec<Module>,
    ) -> Result<()> {
        if done.contains(name) || self.is_builtin(name) {
            return Ok(());
        }
        if path.iter().any(|p| p == name) {
            return Err(Error::invalid(
                "module dependencies",
                format!("cycle through {}", path.join(" -> ")),
            ));
        }
        let module = self.load(name)?;
        path.push(name.to_owned());
        for dep in module.depends.clone() {
            self.visit(&dep, done, path, out)?;
        }
        path.pop();
        done.insert(name.to_owned());
        out.push(module);
        Ok(())
    }
}

/// Names from the `depends=` field of a module's `.modinfo`.
pub fn depends_of(ko: &[u8]) -> Result<Vec<String>> {
    let info = elf::modinfo(ko)?;
    Ok(info
        .iter()
        .filter(|(k, _)| k == "depends")
        .flat_map(|(_, v)| {
            v.split(',')
                .filter(|s| !s.is_empty())
                .map(canonical_name)
                .collect::<Vec<_>>()
        })
        .collect())
}

/// Reads a `.ko`, decompressing `.ko.xz` / `.ko.zst` / `.ko.gz` with the host tool.
pub fn read_module_file(path: &Path) -> Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".ko.xz") {
        Some(("xz", "xz-utils"))
    } else if name.ends_with(".ko.zst") {
        Some(("zstd", "zstd"))
    } else if name.ends_with(".ko.gz") {
        Some(("gzip", "gzip"))
    } else {
        None
    };
    let Some((tool, package)) = tool else {
        return fs::read(path).map_err(io_err(format!("reading {}", path.display())));
    };
    let out = Command::new(tool)
        .arg("-dc")
        .arg(path)
        .output()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::Missing {
                    what: format!("`{tool}` (to decompress {})", path.display()),
                    fix: format!("apt-get install {package}"),
                }
            } else {
                Error::Io {
                    context: format!("running {tool} -dc {}", path.display()),
                    source: e,
                }
            }
        })?;
    if !out.status.success() {
        return Err(Error::Command {
            command: format!("{tool} -dc {}", path.display()),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(out.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(canonical_name("virtio-pci"), "virtio_pci");
        assert_eq!(
            module_name_of("virtio_balloon.ko.zst"),
            Some("virtio_balloon")
        );
        assert_eq!(module_name_of("virtio_balloon.ko"), Some("virtio_balloon"));
        assert_eq!(module_name_of("modules.dep"), None);
    }

    /// Against the installed UML modules, when present: virtio_balloon needs nothing else there.
    #[test]
    fn uml_balloon_module_resolves() {
        let Some(root) = std::fs::read_dir("/usr/lib/uml/modules")
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| e.ok())
            .map(|e| e.path())
        else {
            eprintln!("skipping: /usr/lib/uml/modules is absent (apt-get install user-mode-linux)");
            return;
        };
        let tree = ModuleTree::open(&root).unwrap();
        let mods = tree.resolve(&["virtio_balloon"]).unwrap();
        assert_eq!(mods.last().unwrap().name, "virtio_balloon");
        assert!(mods.last().unwrap().data.starts_with(b"\x7fELF"));
    }
}
