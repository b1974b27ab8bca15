-- Development data: the notes a fresh database starts with.
INSERT INTO notes (title, body) VALUES
  ('Welcome', 'This note was seeded into Postgres by the seed Job.'),
  ('Start order', 'db, then migrate, then seed, then api, then web: dependsOn in devloop.yaml.'),
  ('Edit me', 'Change seed/seed.sql and save: devloop builds the seed image and runs the Job again.')
ON CONFLICT (title) DO NOTHING;
