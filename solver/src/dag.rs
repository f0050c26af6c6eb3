//! Content-addressed vertices and the validated DAG ([`Definition`]) that holds them.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use kiln_cache::Digest;
use petgraph::graphmap::DiGraphMap;
use serde::{Deserialize, Serialize};

use crate::op::{ExecOp, FileAction, FileOp, MergeOp, Op};

/// An op together with the digests of the vertices it reads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vertex {
    /// The work to do.
    pub op: Op,
    /// Digests of the input vertices; ops refer to them by index.
    pub inputs: Vec<Digest>,
}

impl Vertex {
    /// The vertex digest: sha256 over the canonical JSON encoding of op and inputs.
    pub fn digest(&self) -> Digest {
        let encoded = serde_json::to_vec(self).expect("ops always serialise");
        Digest::of(&encoded)
    }

    /// Checks that every input index the op uses exists.
    fn check_input_indexes(&self) -> Result<(), usize> {
        let n = self.inputs.len();
        let check = |i: usize| if i < n { Ok(()) } else { Err(i) };
        match &self.op {
            Op::Source(_) => Ok(()),
            Op::Exec(ExecOp { mounts, .. }) => {
                mounts.iter().filter_map(|m| m.input).try_for_each(check)
            }
            Op::File(FileOp { base, actions }) => {
                base.map_or(Ok(()), check)?;
                actions.iter().try_for_each(|a| match a {
                    FileAction::Copy(c) => check(c.input),
                    _ => Ok(()),
                })
            }
            Op::Merge(MergeOp { inputs }) => inputs.iter().copied().try_for_each(check),
        }
    }
}

/// Descriptive data about a vertex that does not affect its digest.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VertexMeta {
    /// Human-readable name, BuildKit-style: `[stage 2/4] RUN make`.
    pub description: String,
    /// 1-based Dockerfile lines `(start, end)` the vertex came from, if any.
    pub location: Option<(usize, usize)>,
    /// Run even when a cache entry exists (`--no-cache`, `--no-cache-filter`).
    pub ignore_cache: bool,
    /// Proxy variables (`HTTP_PROXY=…`) added to an exec's environment; like BuildKit, they
    /// are not part of the digest or the cache key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub proxy_env: Vec<String>,
}

/// Why a DAG is invalid.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DagError {
    /// A vertex lists an input digest that is not in the definition.
    #[error("vertex {vertex} reads {input}, which is not defined")]
    MissingInput {
        /// The reading vertex.
        vertex: Digest,
        /// The undefined input.
        input: Digest,
    },
    /// An op refers to an input index beyond the vertex's input list.
    #[error("vertex {vertex} uses input #{index}, but has fewer inputs")]
    BadInputIndex {
        /// The vertex.
        vertex: Digest,
        /// The out-of-range index.
        index: usize,
    },
    /// A vertex is stored under a digest that is not its own.
    #[error("vertex stored as {stored} has digest {actual}")]
    DigestMismatch {
        /// The key it was stored under.
        stored: Digest,
        /// Its real digest.
        actual: Digest,
    },
    /// The graph has a cycle through this vertex.
    #[error("the graph has a cycle through {0}")]
    Cycle(Digest),
    /// The root digest is not a vertex of the definition.
    #[error("root {0} is not defined")]
    MissingRoot(Digest),
}

/// A validated DAG of vertices, reduced to what its roots need.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Definition {
    vertices: BTreeMap<Digest, Vertex>,
    meta: BTreeMap<Digest, VertexMeta>,
    /// Vertex digests with every input before its readers.
    order: Vec<Digest>,
    /// The results wanted, in the order asked (one per platform of a multi-platform
    /// build); `None` for an empty one.
    roots: Vec<Option<Digest>>,
}

impl Definition {
    /// Validates vertices and keeps only those reachable from `root` (`None`: an empty build,
    /// e.g. `FROM scratch` with nothing on top).
    pub fn new(
        vertices: BTreeMap<Digest, Vertex>,
        meta: BTreeMap<Digest, VertexMeta>,
        root: Option<Digest>,
    ) -> Result<Self, DagError> {
        Self::with_roots(vertices, meta, vec![root])
    }

    /// Like [`new`](Self::new), for several results at once; a vertex several roots
    /// need is one vertex.
    pub fn with_roots(
        vertices: BTreeMap<Digest, Vertex>,
        meta: BTreeMap<Digest, VertexMeta>,
        roots: Vec<Option<Digest>>,
    ) -> Result<Self, DagError> {
        let mut graph: DiGraphMap<Digest, (), std::hash::RandomState> = DiGraphMap::default();
        for (&digest, vertex) in &vertices {
            let actual = vertex.digest();
            if actual != digest {
                return Err(DagError::DigestMismatch {
                    stored: digest,
                    actual,
                });
            }
            vertex
                .check_input_indexes()
                .map_err(|index| DagError::BadInputIndex {
                    vertex: digest,
                    index,
                })?;
            graph.add_node(digest);
            for &input in &vertex.inputs {
                if !vertices.contains_key(&input) {
                    return Err(DagError::MissingInput {
                        vertex: digest,
                        input,
                    });
                }
                graph.add_edge(input, digest, ());
            }
        }
        let sorted = petgraph::algo::toposort(&graph, None)
            .map_err(|cycle| DagError::Cycle(cycle.node_id()))?;

        let mut reachable = std::collections::HashSet::new();
        for &root in roots.iter().flatten() {
            if !vertices.contains_key(&root) {
                return Err(DagError::MissingRoot(root));
            }
            let mut stack = vec![root];
            while let Some(d) = stack.pop() {
                if reachable.insert(d) {
                    stack.extend(vertices[&d].inputs.iter().copied());
                }
            }
        }
        let order: Vec<Digest> = sorted
            .into_iter()
            .filter(|d| reachable.contains(d))
            .collect();
        let vertices = vertices
            .into_iter()
            .filter(|(d, _)| reachable.contains(d))
            .collect();
        let meta = meta
            .into_iter()
            .filter(|(d, _)| reachable.contains(d))
            .collect();
        Ok(Definition {
            vertices,
            meta,
            order,
            roots,
        })
    }

    /// One definition for all of `parts`' results (e.g. one per platform), in their order:
    /// identical vertices are one, and keep the first part's description.
    pub fn merge(parts: &[Definition]) -> Result<Self, DagError> {
        let mut vertices = BTreeMap::new();
        let mut meta = BTreeMap::new();
        for part in parts {
            for (digest, vertex) in &part.vertices {
                vertices.entry(*digest).or_insert_with(|| vertex.clone());
            }
            for (digest, m) in &part.meta {
                meta.entry(*digest).or_insert_with(|| m.clone());
            }
        }
        let roots = parts.iter().flat_map(|p| p.roots.iter().copied()).collect();
        Self::with_roots(vertices, meta, roots)
    }

    /// The final vertex (the first root), or `None` for an empty result.
    pub fn root(&self) -> Option<Digest> {
        self.roots.first().copied().flatten()
    }

    /// Every result wanted, in order; `None` for an empty one.
    pub fn roots(&self) -> &[Option<Digest>] {
        &self.roots
    }

    /// The vertex with this digest.
    pub fn vertex(&self, digest: &Digest) -> Option<&Vertex> {
        self.vertices.get(digest)
    }

    /// The descriptive data of a vertex.
    pub fn meta(&self, digest: &Digest) -> Option<&VertexMeta> {
        self.meta.get(digest)
    }

    /// Vertex digests in dependency order (inputs first).
    pub fn topological_order(&self) -> &[Digest] {
        &self.order
    }

    /// Number of vertices.
    pub fn len(&self) -> usize {
        self.vertices.len()
    }

    /// True when there are no vertices.
    pub fn is_empty(&self) -> bool {
        self.vertices.is_empty()
    }

    /// A Graphviz rendering: one node per vertex labelled with its description and short
    /// digest, edges from inputs to readers.
    pub fn to_dot(&self) -> String {
        let mut out = String::from(
            "digraph kiln {\n  rankdir=TB;\n  node [shape=box, fontname=\"monospace\"];\n",
        );
        for d in &self.order {
            let label = self.display_label(d);
            let _ = writeln!(
                out,
                "  \"{}\" [label=\"{}\\n{}\"];",
                d,
                escape_dot(&label),
                d.short(12)
            );
        }
        for d in &self.order {
            for input in &self.vertices[d].inputs {
                let _ = writeln!(out, "  \"{input}\" -> \"{d}\";");
            }
        }
        out.push_str("}\n");
        out
    }

    /// A JSON rendering: `{"root": …, "vertices": [{"digest", "description", "location",
    /// "op", "inputs"}, …]}` in dependency order; a definition of several results has
    /// `"roots": […]` too.
    pub fn to_json(&self) -> serde_json::Value {
        let vertices: Vec<serde_json::Value> = self
            .order
            .iter()
            .map(|d| {
                let v = &self.vertices[d];
                let meta = self.meta.get(d).cloned().unwrap_or_default();
                serde_json::json!({
                    "digest": d,
                    "description": meta.description,
                    "location": meta.location,
                    "ignore_cache": meta.ignore_cache,
                    "op": v.op,
                    "inputs": v.inputs,
                })
            })
            .collect();
        let mut json = serde_json::json!({ "root": self.root(), "vertices": vertices });
        if self.roots.len() > 1 {
            json["roots"] = serde_json::json!(self.roots);
        }
        json
    }

    fn display_label(&self, d: &Digest) -> String {
        match self.meta.get(d) {
            Some(m) if !m.description.is_empty() => m.description.clone(),
            _ => self.vertices[d].op.label(),
        }
    }
}

fn escape_dot(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Collects vertices, merging identical ones, then validates them into a [`Definition`].
#[derive(Default)]
pub struct DefinitionBuilder {
    vertices: BTreeMap<Digest, Vertex>,
    meta: BTreeMap<Digest, VertexMeta>,
    known: HashMap<Digest, ()>,
}

impl DefinitionBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a vertex and returns its digest. Adding an identical vertex again returns the same
    /// digest and keeps the first description.
    pub fn add(&mut self, op: Op, inputs: Vec<Digest>, meta: VertexMeta) -> Digest {
        let vertex = Vertex { op, inputs };
        let digest = vertex.digest();
        if self.known.insert(digest, ()).is_none() {
            self.vertices.insert(digest, vertex);
            self.meta.insert(digest, meta);
        } else if meta.ignore_cache {
            // A vertex asked to bypass the cache anywhere bypasses it everywhere.
            if let Some(m) = self.meta.get_mut(&digest) {
                m.ignore_cache = true;
            }
        }
        digest
    }

    /// Validates and keeps what `root` needs.
    pub fn finish(self, root: Option<Digest>) -> Result<Definition, DagError> {
        Definition::new(self.vertices, self.meta, root)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Platform;
    use crate::op::{SourceOp, SymlinkAction};

    fn image(name: &str) -> Op {
        Op::Source(SourceOp::Image {
            reference: name.into(),
            platform: "linux/amd64".parse::<Platform>().unwrap(),
        })
    }

    fn link(path: &str) -> Op {
        Op::File(FileOp {
            base: Some(0),
            actions: vec![FileAction::Symlink(SymlinkAction {
                target: "x".into(),
                path: path.into(),
            })],
        })
    }

    #[test]
    fn identical_ops_are_one_vertex() {
        let mut b = DefinitionBuilder::new();
        let a = b.add(image("busybox"), vec![], VertexMeta::default());
        let a2 = b.add(image("busybox"), vec![], VertexMeta::default());
        assert_eq!(a, a2);
        let l = b.add(link("/l"), vec![a], VertexMeta::default());
        let def = b.finish(Some(l)).unwrap();
        assert_eq!(def.len(), 2);
        assert_eq!(def.topological_order(), &[a, l]);
    }

    #[test]
    fn unreachable_vertices_are_dropped() {
        let mut b = DefinitionBuilder::new();
        let a = b.add(image("a"), vec![], VertexMeta::default());
        let _unused = b.add(image("b"), vec![], VertexMeta::default());
        let def = b.finish(Some(a)).unwrap();
        assert_eq!(def.len(), 1);
    }

    #[test]
    fn digests_change_with_inputs() {
        let mut b = DefinitionBuilder::new();
        let a = b.add(image("a"), vec![], VertexMeta::default());
        let c = b.add(image("c"), vec![], VertexMeta::default());
        assert_ne!(
            b.add(link("/l"), vec![a], VertexMeta::default()),
            b.add(link("/l"), vec![c], VertexMeta::default())
        );
    }

    #[test]
    fn rejects_broken_graphs() {
        let a = Vertex {
            op: image("a"),
            inputs: vec![],
        };
        let da = a.digest();
        let missing = Vertex {
            op: link("/l"),
            inputs: vec![Digest::of(b"nope")],
        };
        let dm = missing.digest();
        let vertices = BTreeMap::from([(da, a.clone()), (dm, missing)]);
        assert!(matches!(
            Definition::new(vertices, BTreeMap::new(), Some(dm)),
            Err(DagError::MissingInput { .. })
        ));

        let bad_index = Vertex {
            op: link("/l"),
            inputs: vec![],
        };
        let db = bad_index.digest();
        let vertices = BTreeMap::from([(db, bad_index)]);
        assert!(matches!(
            Definition::new(vertices, BTreeMap::new(), Some(db)),
            Err(DagError::BadInputIndex { index: 0, .. })
        ));

        let vertices = BTreeMap::from([(Digest::of(b"wrong"), a)]);
        assert!(matches!(
            Definition::new(vertices, BTreeMap::new(), None),
            Err(DagError::DigestMismatch { .. })
        ));
        assert!(matches!(
            Definition::new(BTreeMap::new(), BTreeMap::new(), Some(da)),
            Err(DagError::MissingRoot(_))
        ));
    }
}
