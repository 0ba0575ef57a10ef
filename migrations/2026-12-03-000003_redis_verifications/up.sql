-- Counts verifications of Redis state that replaced a stamp in force (rebuilds). Every API
-- reads it a few times a second and forgets the stamps it holds when it moved: an API that
-- met no request while another node took over must not keep trusting a stamp that the old
-- node still carries (a failback would admit on it). A rebuild opens Redis only after every
-- API had time to see its count.
CREATE SEQUENCE redis_verifications;
