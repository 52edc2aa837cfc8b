# Draws bench/results.png from the .dat files report.py writes.
#   gnuplot -e "dir='DATA_DIR'; out='results.png'; stamp='...'" plot.gp
# Columns of every .dat: label procpool mp_pool ppe threads mq (the same colors in every panel).
set terminal pngcairo size 1650,1050 font "DejaVu Sans,10" noenhanced
set output out
set datafile missing "NaN"
memcpy = real(system("cat ".dir."/memcpy.txt"))
array T[5]
do for [i=1:5] { T[i] = system(sprintf("sed -n %dp %s/titles.txt", i, dir)) }
array C[5] = ["#d62728", "#1f77b4", "#17becf", "#7f7f7f", "#ff7f0e"]

set style data histograms
set style histogram clustered gap 1.5
set style fill solid 0.9 border -1
set boxwidth 0.9
set grid ytics lc rgb "#dddddd"
set xtics nomirror scale 0
set ytics nomirror
set border 3
set key off

set multiplot layout 2,3 title "procpool vs peers — ".stamp font ",13"

set title "(a) map over 1,000,000 ints, cold and warm  [items/s, log, higher is better]"
set logscale y
set format y "%.0e"
set yrange [1e5:1e11]  # headroom above the bars for the key
set key top left Left reverse samplen 1 font ",9"
plot for [i=2:6] dir."/a.dat" using i:xtic(1) title T[i-1] lc rgb C[i-1]
set key off

set title "(b) apply_async(x).get() round trip, warm  [us, log, lower is better]"
set yrange [*:*]
set format y "%g"
plot for [i=2:6] dir."/b.dat" using i:xtic(1) lc rgb C[i-1]

set title "(c) bandwidth  [MB/s, log, higher is better]; dashed: 1-thread memcpy\n(the thread pool copies nothing: left out)"
set yrange [100:memcpy * 3]
set arrow 1 from graph 0, first memcpy to graph 1, first memcpy nohead dt 2 lw 2 lc rgb "black"
set label 1 sprintf("memcpy %.0f MB/s", memcpy) at graph 0.02, first memcpy * 1.25 font ",9"
plot for [i in "2 3 4 6"] dir."/c.dat" using (column(int(i))):xtic(1) lc rgb C[int(i)-1]
unset label 1
set yrange [*:*]
unset arrow 1

set title "(d) CPU-bound, 2 workers, cold and warm  [speedup over serial; dashed: 2x]"
unset logscale y
set format y "%.1f"
set yrange [0:2.4]
set arrow 2 from graph 0, first 2 to graph 1, first 2 nohead dt 2 lw 1 lc rgb "black"
set xtics font ",8"  # six clusters
plot for [i=2:6] dir."/d.dat" using i:xtic(1) lc rgb C[i-1]
set xtics font ""
unset arrow 2
set yrange [*:*]

set title "(e) pool start + stop; (b) cold: + one apply  [ms, log, lower is better]"
set logscale y
set format y "%g"
plot for [i=2:6] dir."/e.dat" using i:xtic(1) lc rgb C[i-1]

set title "(f) scaling of (d) with workers (2 cores)  [speedup over serial]"
unset logscale y
set style data linespoints
set xrange [0.8:4.2]
set xtics 1,1,4 scale 1
set yrange [0:2.4]
set format y "%.1f"
set xlabel "workers"
set key bottom right Left reverse samplen 2 font ",9"
plot for [i=2:6] dir."/f.dat" using 1:i title T[i-1] lw 2 pt 7 lc rgb C[i-1]

unset multiplot
