-- Several gateway replicas behind one load balancer: a CancelRequest may reach a replica other
-- than the one holding the session. Each gateway that takes forwarded cancel requests says in
-- its activity reports where the others reach it (its admin listener, `host:port`) and the tag
-- in bits 23-30 of the process ids of the cancel keys it hands out; every report's reply lists
-- the other live gateways' (those that reported within three of their intervals). NULL: a
-- gateway that takes none (a single replica, or an older gateway).
ALTER TABLE gateways ADD COLUMN peer_address text;
ALTER TABLE gateways ADD COLUMN cancel_tag smallint CHECK (cancel_tag BETWEEN 0 AND 255);
