//! A small reader of FDT blobs for the unit tests: it walks the structure block as the
//! devicetree specification defines it (v17), so the tests check the blob a kernel would
//! parse, not the writer's view of it.

use std::collections::BTreeMap;

const FDT_MAGIC: u32 = 0xd00d_feed;
const FDT_BEGIN_NODE: u32 = 1;
const FDT_END_NODE: u32 = 2;
const FDT_PROP: u32 = 3;
const FDT_NOP: u32 = 4;
const FDT_END: u32 = 9;

/// One node's properties.
#[derive(Debug, Default)]
pub struct Node {
    props: BTreeMap<String, Vec<u8>>,
}

impl Node {
    pub fn has(&self, name: &str) -> bool {
        self.props.contains_key(name)
    }

    pub fn u32s(&self, name: &str) -> Vec<u32> {
        self.props.get(name).map_or_else(Vec::new, |v| {
            v.chunks_exact(4)
                .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        })
    }

    pub fn u32(&self, name: &str) -> Option<u32> {
        match self.u32s(name).as_slice() {
            [v] => Some(*v),
            _ => None,
        }
    }

    pub fn u64s(&self, name: &str) -> Vec<u64> {
        self.u32s(name)
            .chunks_exact(2)
            .map(|c| (u64::from(c[0]) << 32) | u64::from(c[1]))
            .collect()
    }

    pub fn strings(&self, name: &str) -> Vec<&str> {
        self.props.get(name).map_or_else(Vec::new, |v| {
            v.split(|b| *b == 0)
                .filter(|s| !s.is_empty())
                .filter_map(|s| std::str::from_utf8(s).ok())
                .collect()
        })
    }

    pub fn string(&self, name: &str) -> Option<&str> {
        let v = self.props.get(name)?;
        let s = v.strip_suffix(&[0])?;
        std::str::from_utf8(s).ok()
    }
}

/// Every node of a blob by its full path ("/" for the root).
#[derive(Debug)]
pub struct Fdt {
    nodes: BTreeMap<String, Node>,
}

fn be32(b: &[u8], off: usize) -> Result<u32, String> {
    b.get(off..off + 4)
        .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or_else(|| format!("read past the end at {off:#x}"))
}

fn cstr(b: &[u8], off: usize) -> Result<&str, String> {
    let rest = b.get(off..).ok_or("string offset out of range")?;
    let end = rest.iter().position(|c| *c == 0).ok_or("unterminated")?;
    std::str::from_utf8(&rest[..end]).map_err(|e| e.to_string())
}

impl Fdt {
    pub fn parse(b: &[u8]) -> Result<Fdt, String> {
        if be32(b, 0)? != FDT_MAGIC {
            return Err("bad magic".into());
        }
        if be32(b, 4)? as usize != b.len() {
            return Err("totalsize is not the blob's length".into());
        }
        let off_struct = be32(b, 8)? as usize;
        let off_strings = be32(b, 12)? as usize;
        if be32(b, 20)? != 17 {
            return Err("version is not 17".into());
        }
        let mut nodes = BTreeMap::new();
        let mut path: Vec<String> = Vec::new();
        let mut pos = off_struct;
        loop {
            let token = be32(b, pos)?;
            pos += 4;
            match token {
                FDT_BEGIN_NODE => {
                    let name = cstr(b, pos)?.to_string();
                    pos = (pos + name.len() + 1 + 3) & !3;
                    path.push(name);
                    nodes.insert(Self::join(&path), Node::default());
                }
                FDT_END_NODE => {
                    path.pop().ok_or("END_NODE without BEGIN_NODE")?;
                }
                FDT_PROP => {
                    let len = be32(b, pos)? as usize;
                    let name_off = be32(b, pos + 4)? as usize;
                    let value = b.get(pos + 8..pos + 8 + len).ok_or("property past end")?;
                    let name = cstr(b, off_strings + name_off)?.to_string();
                    let node = nodes
                        .get_mut(&Self::join(&path))
                        .ok_or("property outside a node")?;
                    if node.props.insert(name.clone(), value.to_vec()).is_some() {
                        return Err(format!("property {name} twice"));
                    }
                    pos = (pos + 8 + len + 3) & !3;
                }
                FDT_NOP => {}
                FDT_END => break,
                t => return Err(format!("bad token {t:#x} at {:#x}", pos - 4)),
            }
        }
        if !path.is_empty() {
            return Err("unclosed nodes".into());
        }
        Ok(Fdt { nodes })
    }

    fn join(path: &[String]) -> String {
        let joined = path
            .iter()
            .filter(|p| !p.is_empty())
            .cloned()
            .collect::<Vec<_>>()
            .join("/");
        format!("/{joined}")
    }

    pub fn node(&self, path: &str) -> Option<&Node> {
        self.nodes.get(path)
    }

    pub fn paths(&self) -> Vec<&str> {
        self.nodes.keys().map(String::as_str).collect()
    }

    /// Direct children of `parent`.
    pub fn children(&self, parent: &str) -> Vec<&str> {
        let prefix = format!("{}/", parent.trim_end_matches('/'));
        self.nodes
            .keys()
            .filter_map(|k| k.strip_prefix(&prefix))
            .filter(|rest| !rest.is_empty() && !rest.contains('/'))
            .collect()
    }
}
