-- The rows of every location-day; sluicegate adds the partition filter.
SELECT m.location_id,
       m.sensor_id AS sensors_id,
       l.name || '-' || m.sensor_id AS location,
       m.datetime,
       l.lat,
       l.lon,
       s.parameter,
       s.units,
       m.value
FROM measurements AS m
JOIN sensors AS s ON s.sensor_id = m.sensor_id
JOIN locations AS l ON l.location_id = m.location_id
