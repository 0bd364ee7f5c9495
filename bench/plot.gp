# Bar chart of the main comparison, drawn by bench/run.py:
#   gnuplot -e "data='build/bench/chart.dat'; output='bench/results.png'" bench/plot.gp
# Columns of data: contender name, CPU µs per request, requests per second.
set terminal pngcairo size 1100,520 font ",10"
set output output
set multiplot layout 1,2 title "create-credential against nginx on 127.0.0.1 (median over rounds; see BENCHMARKS.md)"
set style fill solid 0.8 border -1
set xtics rotate by -35 left nomirror
set grid ytics
set key off
set yrange [0:*]
set xrange [-0.6:*]
set title "client CPU per request (µs, lower is better)"
plot data using 0:2:(0.7):xtic(1) with boxes linecolor rgb "#4477aa", \
     '' using 0:2:(sprintf("%.0f", $2)) with labels offset 0,0.7 notitle
set title "requests per second (higher is better)"
plot data using 0:3:(0.7):xtic(1) with boxes linecolor rgb "#228833", \
     '' using 0:3:(sprintf("%.0f", $3)) with labels offset 0,0.7 notitle
unset multiplot
