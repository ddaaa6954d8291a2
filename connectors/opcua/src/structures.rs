//! Structures the server defines: decoded into their fields where the
//! server publishes their definitions (the DataTypeDefinition attribute of
//! OPC UA 1.04).
//!
//! async-opcua decodes the standard structures itself; a structure of the
//! server's own type arrives as its raw binary body (its fallback type
//! loader), unreadable to the converter. The definitions are loaded only
//! when such a value first arrives on a session (a server without custom
//! structures costs nothing): the server's DataTypes browsed and their
//! definitions read in bulk, made into a dynamic type loader that
//! replaces the previous session's (the type ids of a restarted server
//! may have moved). The value that showed the need is decoded again with
//! it; the later ones the session decodes as they arrive. A server that
//! publishes no definitions (OPC UA 1.03, type dictionaries only) keeps
//! sending raw bodies: the converter gets them as they are, with their
//! type id.

use opcua::client::Session;
use opcua::client::custom_types::DataTypeTreeBuilder;
use opcua::types::custom::DynamicTypeLoader;
use opcua::types::{BinaryDecodable, BinaryEncodable, ByteStringBody, TypeLoaderCollection, Variant};
use std::sync::Arc;

/// Whether `value` holds a structure of a type the session cannot decode
/// (yet).
pub fn undecoded(value: &Variant) -> bool {
    match value {
        Variant::ExtensionObject(o) => o.inner_is::<ByteStringBody>(),
        Variant::Array(a) => a.values.iter().any(undecoded),
        _ => false,
    }
}

/// Load the server's type definitions into the session, in place of any
/// loaded before.
pub async fn load(session: &Session, values_per_read: usize) -> Result<(), String> {
    session.read_namespace_array().await.map_err(|e| format!("reading the namespace array: {e}"))?;
    let tree = DataTypeTreeBuilder::new(|_| true)
        .values_per_read(values_per_read.max(1))
        .build(session)
        .await
        .map_err(|e| format!("reading the server's data types: {e}"))?;
    let mut loaders = TypeLoaderCollection::new();
    loaders.add(Arc::new(DynamicTypeLoader::new(Arc::new(tree))));
    *session.encoding_context().write().loaders_mut() = loaders;
    Ok(())
}

/// `value` decoded again with the session's type loaders (its raw bodies
/// read as the structures they are); `None` if that fails.
pub fn decode_again(session: &Session, value: &Variant) -> Option<Variant> {
    let ctx = session.encoding_context().read();
    let ctx = ctx.context();
    let bytes = value.encode_to_vec(&ctx);
    Variant::decode(&mut std::io::Cursor::new(bytes), &ctx).ok()
}
