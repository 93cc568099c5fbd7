-- Every message rewrites its conversation's row and each of its participants' rows (their copy
-- of last_sent_at is indexed, so those updates are never HOT: a new heap tuple and a new entry
-- in each participants index every time). With the default thresholds autovacuum visits them
-- about once a minute, and in between the dead versions pile up: measured at 100 msg/s in
-- conversations of 5, 23,000 dead tuples for 200 live rows and a 1.6 MB list index for 200
-- entries after 90 s, with Postgres' CPU per message up 60 % and every commit slower. Vacuum
-- these two tables after a fixed number of dead rows, however small the table, and without the
-- cost-based pauses (they are small; the work is the dead versions, not the live data). How
-- often autovacuum looks is the server's autovacuum_naptime, which we ship at 5 s
-- (devtools/stack.py, docker-compose.yml, deploy/k8s/data/postgres.yaml).
ALTER TABLE participants SET (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_cost_delay = 0
);
ALTER TABLE conversations SET (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_cost_delay = 0
);
