//! `driver_state` from Nomad's task handle (RecoverTask): any bytes decode to our state or an
//! error; what decodes encodes back to a state that decodes to the same value.
#![no_main]

use bpfexec_driver::tasks::state::DriverState;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(st) = DriverState::decode(data) {
        let again = DriverState::decode(&st.encode());
        assert_eq!(
            again.as_ref().ok(),
            Some(&st),
            "re-encoding changed the state"
        );
    }
});
