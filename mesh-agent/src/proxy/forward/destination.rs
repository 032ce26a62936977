//! The destination stage: which service port (and subset) a request goes
//! to. The matched rule's destinations are picked by weight; with no rule
//! that forwards, the request goes to the service the client dialled. A
//! destination whose host the mesh does not know is Envoy's "no cluster"
//! (503, flag NC).

use super::flags::ResponseFlag;
use super::outcome::Outcome;
use http::StatusCode;
use mesh_core::route::{pick_destination, HttpRoute, RouteAction, RouteDestination};
use mesh_core::snapshot::Snapshot;

/// Where a request goes.
pub struct Target<'a> {
    /// The destination picked (None: the dialled service, whole).
    pub destination: Option<&'a RouteDestination>,
    /// Index into the snapshot's services.
    pub service: usize,
}

impl Target<'_> {
    pub fn subset(&self) -> Option<&str> {
        self.destination.and_then(|d| d.subset.as_deref())
    }
}

/// A destination host the mesh does not know.
#[derive(Debug)]
pub struct NoCluster<'a>(pub &'a str);

impl NoCluster<'_> {
    pub fn outcome(&self) -> Outcome {
        let cluster = self.0.into();
        Outcome::local(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream", Some(ResponseFlag::NC), cluster)
    }
}

/// The target of a request that matched `route`, with `random` deciding
/// the weighted pick. `dialled` is the service the client dialled (an
/// index into the snapshot's services; none at a gateway): it is the
/// target when no rule forwards, and its port the destinations' default
/// (at a gateway, a destination without a port needs a one-port service).
pub fn choose<'a>(
    snapshot: &Snapshot,
    route: Option<&'a HttpRoute>,
    dialled: Option<usize>,
    random: u64,
) -> Result<Target<'a>, NoCluster<'a>> {
    let destination = match route.map(|r| &r.action) {
        Some(RouteAction::Forward(destinations)) => pick_destination(destinations, random),
        _ => None,
    };
    let Some(destination) = destination else {
        return match dialled {
            Some(service) => Ok(Target { destination: None, service }),
            None => Err(NoCluster("")),
        };
    };
    let port = destination.port.or(dialled.map(|service| snapshot.services[service].port)).unwrap_or(0);
    match snapshot.service_index_for_host(&destination.host, port) {
        Some(service) => Ok(Target { destination: Some(destination), service }),
        None => Err(NoCluster(&destination.host)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::forward::test_support::{routes, snapshot};

    #[test]
    fn a_rule_picks_by_weight_and_no_rule_keeps_the_dialled_service() {
        let snapshot = snapshot();
        let reviews = snapshot.service_index_for_host("reviews.shop.svc.cluster.local", 9080).unwrap();
        let ratings = snapshot.service_index_for_host("ratings.shop.svc.cluster.local", 9080).unwrap();
        let rules = routes("- route:\n  - {destination: {host: ratings, subset: v2}, weight: 1}\n");
        let Ok(target) = choose(&snapshot, rules.first(), Some(reviews), 0) else { panic!("no target") };
        assert_eq!((target.service, target.subset()), (ratings, Some("v2")));
        let Ok(target) = choose(&snapshot, None, Some(reviews), 0) else { panic!("no target") };
        assert_eq!((target.service, target.subset()), (reviews, None));
    }

    #[test]
    fn an_unknown_host_is_no_cluster() {
        let snapshot = snapshot();
        let reviews = snapshot.service_index_for_host("reviews.shop.svc.cluster.local", 9080).unwrap();
        let rules = routes("- route: [{destination: {host: nowhere.example.com}}]\n");
        let Err(no_cluster) = choose(&snapshot, rules.first(), Some(reviews), 0) else { panic!("a cluster") };
        let outcome = no_cluster.outcome();
        assert_eq!(outcome.response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(outcome.flags, [ResponseFlag::NC]);
        assert_eq!(&*outcome.cluster, "nowhere.example.com");
    }
}
