-- The mean per city, parameter and unit over the window; sluicegate adds evaluation_time_utc.
-- (airmax also averaged latitude and longitude over all stations of a city: a meaningless
-- centroid, left out.)
SELECT city,
       parameter_name,
       parameter_unit,
       avg(parameter_value) AS parameter_value,
       count(*) AS num_measurements
FROM in_window
GROUP BY city, parameter_name, parameter_unit
