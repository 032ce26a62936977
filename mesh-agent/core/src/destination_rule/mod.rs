//! DestinationRule: validation of every `trafficPolicy` block into domain
//! types (each bad value a rejection naming its field, as Istio's
//! validation would refuse it), and Istio's rules for which policy applies
//! to traffic for one (subset, port).

mod connection_pool;
mod load_balancer;
mod outlier_detection;
mod policy;
mod proxy_protocol;
mod retry_budget;
mod rule;
mod tls;
mod tunnel;

pub use connection_pool::{ConnectionPool, H2UpgradePolicy, HttpPool, TcpKeepalive, TcpPool};
pub use load_balancer::{
    is_prime, HashCookie, HashKey, HashTable, LoadBalancer, LoadBalancerPolicy, LocalityLbSetting, Warmup,
    DEFAULT_MAGLEV_TABLE_SIZE, DEFAULT_MINIMUM_RING_SIZE, MAX_MAGLEV_TABLE_SIZE,
};
pub use outlier_detection::OutlierDetection;
pub use policy::{EffectivePolicy, Policy, PolicyLevel, PortPolicy};
pub use proxy_protocol::ProxyProtocol;
pub use retry_budget::RetryBudget;
pub use rule::{validate_destination_rule, DestinationRuleModel, SubsetModel, ROOT_NAMESPACE};
pub use tls::{ClientTls, TlsMode};
pub use tunnel::{Tunnel, TunnelProtocol};
