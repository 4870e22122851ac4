//! Discovery: which pods to scrape. Two sources feed the same [`crate::store::Store`]:
//! a Kubernetes pod watch ([`cluster`]) or a YAML file re-read when it changes ([`static_file`]).
//! Neither is ever consulted on the request path. In cluster mode, [`objects`] also watches the
//! workloads and Services whose Object metrics are served.

pub(crate) mod cluster;
pub(crate) mod objects;
pub(crate) mod static_file;
