//! Talking to the server in bulk: its operation limits, browse paths to
//! NodeIds, reads of many nodes.
//!
//! No service of async-opcua splits a request itself, and a server refuses
//! a request above its `OperationLimits` (`BadTooManyOperations`): every
//! call here is cut into chunks of the server's limit (a limit of 0, or one
//! the server does not publish, is taken as [`DEFAULT_CHUNK`]).
//!
//! Paths are resolved with TranslateBrowsePathsToNodeIds, a whole chunk of
//! paths per request: 10,000 keys of 100 devices cost a few requests, not
//! a browse walk per node. A browse name given without its namespace index
//! is tried in each of the server's namespaces, one bulk request per
//! namespace for the paths still unresolved, starting with the namespace
//! the last such name was found in (a device's keys are in its
//! namespace: one round, not one per namespace).
//!
//! A device pattern that names no node as written is matched level by
//! level ([`matching`]): its elements that are regular expressions over
//! the children's browse names are browsed (in bulk too), the others
//! resolved as paths.

use crate::path::{Element, NodeRef};
use opcua::client::Session;
use opcua::types::{
    AttributeId, BrowseDescription, BrowseDirection, BrowsePath, BrowseResultMask, DataValue, NodeId, ObjectId,
    QualifiedName, ReadValueId, ReferenceTypeId, RelativePath, RelativePathElement, StatusCode, TimestampsToReturn,
    VariableId, Variant,
};

/// The chunk size where the server publishes no limit.
pub const DEFAULT_CHUNK: usize = 1000;

/// The server's limits per request, each at least 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub read: usize,
    pub translate: usize,
    pub monitored_items: usize,
    pub browse: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { read: DEFAULT_CHUNK, translate: DEFAULT_CHUNK, monitored_items: DEFAULT_CHUNK, browse: DEFAULT_CHUNK }
    }
}

/// Why a bulk call failed as a whole (the session is gone, a timeout).
pub type Failure = String;

fn failed(what: &str, e: impl std::fmt::Display) -> Failure {
    format!("{what}: {e}")
}

/// The server's OperationLimits and the number of its namespaces.
pub async fn limits(session: &Session) -> Result<(Limits, usize), Failure> {
    let ids = [
        VariableId::Server_ServerCapabilities_OperationLimits_MaxNodesPerRead,
        VariableId::Server_ServerCapabilities_OperationLimits_MaxNodesPerTranslateBrowsePathsToNodeIds,
        VariableId::Server_ServerCapabilities_OperationLimits_MaxMonitoredItemsPerCall,
        VariableId::Server_NamespaceArray,
        VariableId::Server_ServerCapabilities_OperationLimits_MaxNodesPerBrowse,
    ];
    let reads: Vec<ReadValueId> = ids.iter().map(|id| value_of(NodeId::from(*id))).collect();
    let values = session
        .read(&reads, TimestampsToReturn::Neither, 0.0)
        .await
        .map_err(|e| failed("reading the server's limits", e))?;
    let limit = |i: usize| -> usize {
        match values.get(i).and_then(|v| v.value.as_ref()) {
            Some(Variant::UInt32(n)) if *n > 0 => *n as usize,
            _ => DEFAULT_CHUNK,
        }
    };
    let namespaces = match values.get(3).and_then(|v| v.value.as_ref()) {
        Some(Variant::Array(a)) => a.values.len(),
        _ => 1,
    };
    Ok((Limits { read: limit(0), translate: limit(1), monitored_items: limit(2), browse: limit(4) }, namespaces))
}

/// A read of a node's Value attribute.
pub fn value_of(node: NodeId) -> ReadValueId {
    ReadValueId { node_id: node, attribute_id: AttributeId::Value as u32, ..Default::default() }
}

/// Read the values of `nodes`, in chunks; one result per node, in order.
///
/// A server whose MaxNodesPerRead is larger than its message size allows
/// (async-opcua's own: 10,000 nodes a Read, 327,675 bytes a message)
/// refuses a chunk as too large: the chunk is halved until it passes, and
/// `limits.read` keeps what passed for the next reads.
pub async fn read(session: &Session, limits: &mut Limits, nodes: &[NodeId]) -> Result<Vec<DataValue>, Failure> {
    let mut out = Vec::with_capacity(nodes.len());
    let mut next = 0;
    while next < nodes.len() {
        let chunk = &nodes[next..nodes.len().min(next + limits.read.max(1))];
        let reads: Vec<ReadValueId> = chunk.iter().cloned().map(value_of).collect();
        let values = match session.read(&reads, TimestampsToReturn::Both, 0.0).await {
            Ok(v) => v,
            Err(e) if too_large(e.status()) && chunk.len() > 1 => {
                limits.read = chunk.len() / 2;
                tracing::debug!(
                    "a read of {} nodes is too large for the server: {} at a time",
                    chunk.len(),
                    limits.read
                );
                continue;
            }
            Err(e) => return Err(failed(&format!("reading {} nodes", chunk.len()), e)),
        };
        if values.len() != chunk.len() {
            return Err(format!("the server answered a read of {} nodes with {} values", chunk.len(), values.len()));
        }
        next += chunk.len();
        out.extend(values);
    }
    Ok(out)
}

/// A request or its response over the size one message may have.
fn too_large(e: StatusCode) -> bool {
    [StatusCode::BadRequestTooLarge, StatusCode::BadResponseTooLarge, StatusCode::BadEncodingLimitsExceeded]
        .contains(&e)
}

/// A path to resolve: from `start`, down `elements` (none: `start` itself).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PathRequest {
    pub start: NodeId,
    pub elements: Vec<Element>,
}

impl PathRequest {
    /// Where a node reference starts: its own NodeId, the root, or `base`
    /// (the device's node).
    pub fn of(r: &NodeRef, base: &NodeId) -> PathRequest {
        match r {
            NodeRef::Id(id) => PathRequest { start: id.clone(), elements: Vec::new() },
            NodeRef::Path { absolute: true, elements } => {
                PathRequest { start: ObjectId::RootFolder.into(), elements: elements.clone() }
            }
            NodeRef::Path { absolute: false, elements } => {
                PathRequest { start: base.clone(), elements: elements.clone() }
            }
        }
    }
}

/// Resolve every path; `None` where the server has no such node (or only
/// answers with an error for it). One result per request, in order.
///
/// `hint` is the namespace an unqualified name was last found in: it is
/// tried first (the keys of a device are in its namespace), and updated.
pub async fn resolve(
    session: &Session,
    limits: &Limits,
    namespaces: usize,
    hint: &mut Option<u16>,
    requests: &[PathRequest],
) -> Result<Vec<Option<NodeId>>, Failure> {
    let mut out: Vec<Option<NodeId>> =
        requests.iter().map(|r| r.elements.is_empty().then(|| r.start.clone())).collect();
    // The namespaces an unqualified name is tried in: the hint, the
    // servers' own (a device tree is rarely in namespace 0), then OPC UA's.
    let mut candidates: Vec<u16> = (1..namespaces.min(usize::from(u16::MAX))).map(|n| n as u16).collect();
    candidates.push(0);
    if let Some(h) = *hint {
        candidates.retain(|&c| c != h);
        candidates.insert(0, h);
    }
    for (round, ns) in candidates.iter().enumerate() {
        let pending: Vec<usize> = (0..requests.len())
            .filter(|&i| out[i].is_none())
            .filter(|&i| round == 0 || requests[i].elements.iter().any(|e| e.ns.is_none()))
            .collect();
        if pending.is_empty() {
            break;
        }
        for chunk in pending.chunks(limits.translate) {
            let paths: Vec<BrowsePath> = chunk.iter().map(|&i| browse_path(&requests[i], *ns)).collect();
            let results = session
                .translate_browse_paths_to_node_ids(&paths)
                .await
                .map_err(|e| failed(&format!("resolving {} browse paths", chunk.len()), e))?;
            for (&i, r) in chunk.iter().zip(results) {
                if r.status_code.is_good()
                    && let Some(t) = r.targets.as_ref().and_then(|t| t.first())
                {
                    out[i] = Some(t.target_id.node_id.clone());
                    if requests[i].elements.iter().any(|e| e.ns.is_none()) {
                        *hint = Some(*ns);
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Whether a browse name of a pattern is a regular expression: it has one
/// of a regular expression's operators and compiles as one (anchored: the
/// whole name must match).
pub fn pattern(element: &Element) -> Option<regex::Regex> {
    if !element.name.contains(['*', '+', '?', '|', '[', '(', '{', '^', '$']) {
        return None;
    }
    regex::Regex::new(&format!("^(?:{})$", element.name)).ok()
}

/// The nodes below `start` whose browse names match `elements`, level by
/// level: an element that is a [`pattern`] matched against every child's
/// browse name (Browse, in chunks of the server's `MaxNodesPerBrowse`,
/// following continuation points), a literal one resolved as a path.
pub async fn matching(
    session: &Session,
    limits: &Limits,
    namespaces: usize,
    hint: &mut Option<u16>,
    start: NodeId,
    elements: &[Element],
) -> Result<Vec<NodeId>, Failure> {
    let mut current = vec![start];
    for element in elements {
        let Some(re) = pattern(element) else {
            let requests: Vec<PathRequest> =
                current.iter().map(|n| PathRequest { start: n.clone(), elements: vec![element.clone()] }).collect();
            current = resolve(session, limits, namespaces, hint, &requests).await?.into_iter().flatten().collect();
            continue;
        };
        let mut next: Vec<NodeId> = Vec::new();
        for chunk in current.chunks(limits.browse) {
            let nodes: Vec<BrowseDescription> = chunk
                .iter()
                .map(|n| BrowseDescription {
                    node_id: n.clone(),
                    browse_direction: BrowseDirection::Forward,
                    reference_type_id: ReferenceTypeId::HierarchicalReferences.into(),
                    include_subtypes: true,
                    node_class_mask: 0,
                    result_mask: BrowseResultMask::All as u32,
                })
                .collect();
            let mut results = session
                .browse(&nodes, 0, None)
                .await
                .map_err(|e| failed(&format!("browsing {} nodes for `{element}`", nodes.len()), e))?;
            loop {
                let mut more = Vec::new();
                for r in &results {
                    for child in r.references.iter().flatten() {
                        let name = &child.browse_name;
                        if element.ns.is_none_or(|ns| ns == name.namespace_index)
                            && re.is_match(name.name.as_ref())
                            && !next.contains(&child.node_id.node_id)
                        {
                            next.push(child.node_id.node_id.clone());
                        }
                    }
                    if !r.continuation_point.is_null_or_empty() {
                        more.push(r.continuation_point.clone());
                    }
                }
                if more.is_empty() {
                    break;
                }
                results = session
                    .browse_next(false, &more)
                    .await
                    .map_err(|e| failed(&format!("browsing on for `{element}`"), e))?;
            }
        }
        current = next;
    }
    Ok(current)
}

fn browse_path(r: &PathRequest, ns: u16) -> BrowsePath {
    let elements = r
        .elements
        .iter()
        .map(|e| RelativePathElement {
            reference_type_id: ReferenceTypeId::HierarchicalReferences.into(),
            is_inverse: false,
            include_subtypes: true,
            target_name: QualifiedName::new(e.ns.unwrap_or(ns), e.name.as_str()),
        })
        .collect();
    BrowsePath { starting_node: r.start.clone(), relative_path: RelativePath { elements: Some(elements) } }
}

/// A value as text, for device names and profiles: a string as it is, a
/// localized text its text, anything else as OPC UA prints it.
pub fn text(value: &DataValue) -> Option<String> {
    if value.status.is_some_and(|s| s.is_bad()) {
        return None;
    }
    Some(match value.value.as_ref()? {
        Variant::String(s) => s.as_ref().to_owned(),
        Variant::LocalizedText(t) => t.text.as_ref().to_owned(),
        Variant::Empty => return None,
        other => other.to_string(),
    })
}

/// A value as an OPC UA JSON Variant (reversible form), in the session's
/// encoding context (its namespaces and the structures it knows).
pub fn json(session: &Session, value: &Variant) -> Vec<u8> {
    let ctx = session.encoding_context().read();
    opcua::types::json::to_bytes(value, &ctx.context())
        .unwrap_or_else(|e| format!("\"not encodable: {e}\"").into_bytes())
}

/// A status's name and code, for logs.
pub fn describe(status: StatusCode) -> String {
    format!("{status} ({:#010x})", status.bits())
}
