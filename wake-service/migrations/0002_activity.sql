-- Scale-to-zero: gateways report open sessions, which hold an endpoint awake until this time
-- (a lease renewed by every report, so a gateway that dies stops holding it).
ALTER TABLE endpoints ADD COLUMN held_until timestamptz;
