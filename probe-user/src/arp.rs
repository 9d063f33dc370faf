//! ARP on the VIP's interface: gratuitous announcements and RFC 5227 conflict probes.
//! (Being written: see issue 3.)
